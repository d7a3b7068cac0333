"""The run's committer as the local scheduler sees it: started with the first block it may
serve, granting each block's outputs, watched (:mod:`backbeat.runtime.committer`).

Only blocks forked by this interpreter's fork server in an unsandboxed run are granted (a
sandboxed block's outputs are staged and checked, another interpreter's blocks run elsewhere),
and only whole, ordinary blocks: not a slot of a split block, a loop's side nor an analyzer
(it reads its small result back to report it).  ``BACKBEAT_COMMITTER=off`` turns the committer
off (every block writes its own files, as before).  If the committer dies, the running blocks
holding its grants are killed and fail saying so, and later blocks write their own files.
"""

from __future__ import annotations

import dataclasses
import os
from typing import TYPE_CHECKING

from backbeat.processes.outcome import Outcome
from backbeat.runtime.grants import COMMITTER_JOB, COMMITTER_TARGET, Grants
from backbeat.runtime.spec import BlockSpec

if TYPE_CHECKING:
    from backbeat.processes.group import ProcessGroup


class Committing:
    """Grants, and the committer's life, for one run's scheduler."""

    def __init__(self, group: ProcessGroup, sandboxed: bool, log: str | None = None) -> None:
        self.group = group
        self.log = log
        self.enabled = not sandboxed and os.environ.get("BACKBEAT_COMMITTER", "on") != "off"
        self._grants: Grants | None = None
        self._address: str | None = None
        self._holders: set[str] = set()  # the processes given grants
        self.lost: Outcome | None = None  # how the committer ended, if it died during the run
        self.orphaned: set[str] = set()  # processes killed because it died

    def grant(self, pid: str, spec: BlockSpec, python: str | None) -> BlockSpec:
        """``spec`` with the committer's address and a grant per output, when it may hand them over."""
        if (not self.enabled or python is not None or self.lost is not None or spec.loop is not None
                or spec.range is not None or spec.kind == "analyzer" or not spec.outputs):
            return spec
        if self._grants is None:
            self._grants = Grants()
            self._address = self.group.address("committer")
            self.group.spawn(COMMITTER_JOB, COMMITTER_TARGET, self._grants.payload(self._address), log=self.log)
        self._holders.add(pid)
        return dataclasses.replace(spec, committer=self._address,
                                   outputs=self._grants.outputs(spec.outputs, spec.formats, spec.compression))

    def watch(self, running: dict[str, list[str]]) -> list[str]:
        """If the committer died: the running processes to kill (they hold its grants, and may wait
        for it); ``running``: job → its process ids."""
        if self._address is None or self.lost is not None or self.group.ended(COMMITTER_JOB) is None:
            return []
        self.lost = self.group.outcome(COMMITTER_JOB)
        self.orphaned = {p for ids in running.values() for p in ids if p in self._holders}
        return sorted(self.orphaned)

    def failure(self, pid: str) -> Outcome | None:
        """Why process ``pid`` failed, if it was killed because the committer died."""
        if pid not in self.orphaned or self.lost is None:
            return None
        how = self.lost.exit.describe() if self.lost.exit is not None else self.lost.message
        return Outcome("system", f"the committer process it hands its outputs to died ({how})")
