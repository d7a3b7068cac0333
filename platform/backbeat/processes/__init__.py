"""Processes: pre-warmed block processes, the channel they report on, and how they ended.

Lives here: the fork server (``workerpool``) and what runs inside it (``zygote``; its warm-up:
``warmup``; what each child starts with: ``freshstate``), exits and
limits (``exits``), the control channel (``control``, a Unix socket; its executor's end: ``controlserver``;
where its private folders are made
and those of dead processes removed: ``controlfolders``), job outcomes and the one error
encoding between processes (``outcome``), the one spawn-and-collect loop (``group``:
``ProcessGroup``), the one ZeroMQ context of a process (``zmqcontext``), execution environments'
interpreters (``environments``; what an interpreter reports about itself: ``interpreter``), the
bubblewrap sandbox around fork servers (``sandbox``), and the warm template serving commands
and runs' zygotes (``template``; its process: ``templateserver``).
Targets are named by strings (``"module:function"``), so nothing here imports the code it runs.
May import: ``core``.
"""
