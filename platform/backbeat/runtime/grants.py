"""Grants: what the run's committer may write, as the command gives it to each block
(:mod:`backbeat.runtime.committer` says why and how they are checked).

Light on purpose (no numpy, h5py nor zmq): the command imports it to grant each block's outputs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import secrets

from backbeat.core.hashing import canonical_json, sha
from backbeat.runtime.spec import OutputSpec

#: the committer's job id in a run's process group, and its job target
COMMITTER_JOB = "(committer)"
COMMITTER_TARGET = "backbeat.runtime.committer:serve"


def declaration(expanded: dict) -> bytes:
    """The text of an expanded declaration whose sha256 a grant binds (BEAT's canonical JSON)."""
    return canonical_json(expanded).encode("utf-8")


def grant(secret: bytes, key: str, path: str, dataformat: str, declaration_sha: str, compression: str | None) -> str:
    """The grant to commit output ``key`` at ``path``: HMAC-SHA256 under the run's ``secret`` of the
    key, the path, the dataformat, the sha256 of its expanded :func:`declaration` and the compression."""
    text = json.dumps([key, path, dataformat, declaration_sha, compression or ""])
    return hmac.new(secret, text.encode("utf-8"), hashlib.sha256).hexdigest()


class Grants:
    """The command's side: the run's secret, and the grants of the outputs its blocks may hand over."""

    def __init__(self) -> None:
        self.secret = secrets.token_bytes(32)
        self._shas: dict[str, str] = {}  # dataformat -> sha256 of its declaration (one per run)

    def payload(self, address: str) -> dict:
        """The committer's job spec: its address and the run's secret (it travels in the job's
        payload, as every job's control token does: only that process is given it)."""
        return {"address": address, "secret": self.secret.hex()}

    def outputs(self, outputs: dict[str, OutputSpec], formats: dict[str, dict],
                compression: str | None) -> dict[str, OutputSpec]:
        """``outputs``, each with its grant."""
        out = {}
        for n, o in outputs.items():
            digest = self._shas.get(o.dataformat)
            if digest is None:
                digest = self._shas[o.dataformat] = sha(declaration(formats[o.dataformat]))
            out[n] = dataclasses.replace(o, grant=grant(self.secret, o.key, o.path, o.dataformat, digest, compression))
        return out
