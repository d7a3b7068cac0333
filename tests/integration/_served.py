"""``python _served.py FD ARGS…``: ``backbeat ARGS…`` exactly as its console script runs it
(``sys.path[0]`` the interpreter's folder, then :func:`backbeat.cli.client.entry`'s steps), writing
first to descriptor FD whether a template served it (``served``) or it ran here (``here``).
"""

from __future__ import annotations

import os
import sys

sys.path[0] = os.path.dirname(sys.executable)  # (as the installed script: the same context key)
sys.argv[0] = os.path.join(sys.path[0], "backbeat")
marker = int(sys.argv.pop(1))

from backbeat.cli import client  # noqa: E402

code = client.serve()
os.write(marker, b"here" if code is None else b"served")
os.close(marker)
if code is None:
    from backbeat.cli.command import entry

    entry()
os._exit(code or 0)
