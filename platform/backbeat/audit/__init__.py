"""Audit: what changed since a recorded run (``status``) and whether a run still holds (``audit``).

May import: every layer below (``core`` … ``execution``).
"""
