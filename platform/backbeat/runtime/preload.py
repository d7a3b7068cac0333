"""What the fork server's zygote imports once, before it forks any block process.

Every block process, indexing job and database provider imports the block runtime
(:mod:`~backbeat.runtime.blockrun` with the cache files, the driver, BEAT's API, streams;
:mod:`~backbeat.runtime.dbprovider`, :mod:`~backbeat.runtime.loopchannel`) and the
``beat.backend.python`` aliases user code imports.  Imported by the zygote (the executor lists
this module in its fork server's preload, :func:`backbeat.execution.state.local_group`), all of
it is inherited by each child — copy-on-write, shared — instead of being imported again by each
(~20 ms of CPU per block process: ``docs/performance.md``).

Importing this module installs the aliases (:func:`~backbeat.runtime.compat.install_beat_aliases`)
and runs one small block (:func:`~backbeat.runtime.rehearsal.rehearse`, its code warm in every child):
only backbeat's own worker processes import it.
"""

from __future__ import annotations

import importlib

from backbeat.runtime import blockrun, dbprovider, loopchannel
from backbeat.runtime.compat import ALIASES, install_beat_aliases

#: the modules preloaded (for tests and tracing)
MODULES = (blockrun.__name__, dbprovider.__name__, loopchannel.__name__)

install_beat_aliases()
for _alias in ALIASES:
    importlib.import_module(_alias)

try:  # one small block run here, so that each block process forked from here copies fewer pages
    from backbeat.runtime.rehearsal import rehearse

    rehearse()
except Exception:  # noqa: BLE001 - (a folder that cannot be written...) block processes only cost more
    pass
try:  # ... and a streamed one of a chain, several times: its code quickened and specialised here
    from backbeat.runtime.rehearsal import rehearse_streamed

    rehearse_streamed()
except Exception:  # noqa: BLE001 - (as above)
    pass
from backbeat.processes.warmup import learn_from  # noqa: E402
from backbeat.runtime import codeloader  # noqa: E402
from backbeat.runtime.rehearsal import learn  # noqa: E402

learn_from(learn)  # the zygote makes the dataformats' value classes of the blocks it forks, once
learn_from(codeloader.learn)  # ... and compiles their code, once
