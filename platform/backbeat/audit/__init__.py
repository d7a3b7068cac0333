"""Audit: what changed since a recorded run (``status``) and whether a run still holds (``audit``).

Lives here: the present state of an experiment and explanations of changes (``changes``),
``status`` and ``audit`` (``audit``).
May import: every layer below (``core`` … ``execution``).
"""
