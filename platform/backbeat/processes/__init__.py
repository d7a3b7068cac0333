"""Processes: pre-warmed block processes and the channel they report on.

Lives here: the fork server (``workerpool``: spawn, limits, exit classification), what runs
inside it (``zygote``) and the ZeroMQ control channel with job outcomes (``control``).
Targets are named by strings (``"module:function"``), so nothing here imports the code it runs.
May import: ``core`` (and ``data`` for encodings).
"""
