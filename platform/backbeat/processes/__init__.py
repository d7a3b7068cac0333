"""Processes: pre-warmed block processes, the channel they report on, and how they ended.

Lives here: the fork server (``workerpool``) and what runs inside it (``zygote``), exits and
limits (``exits``), the ZeroMQ control channel (``control``), job outcomes and the one error
encoding between processes (``outcome``), the one spawn-and-collect loop (``group``:
``ProcessGroup``) and the one ZeroMQ context of a process (``zmqcontext``).
Targets are named by strings (``"module:function"``), so nothing here imports the code it runs.
May import: ``core``.
"""
