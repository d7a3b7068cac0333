"""The library verbs of attestations, re-exported by :mod:`backbeat.api` (each returns plain data).

Each imports its module when called, so that importing the API (every command line does)
does not import the execution layer.
"""

from __future__ import annotations

import os


def export_experiment(prefix: str | os.PathLike, cache: str | os.PathLike, name: str, output: str | os.PathLike,
                      with_data: bool = False) -> dict:
    """Write the attestation archive of an experiment's last successful run (``experiments export``)."""
    from backbeat.attestation.export import export

    return export(prefix, cache, name, output, with_data)


def verify_attestation(archive: str | os.PathLike, data: str | os.PathLike | None = None, rerun: bool = False,
                       expect: str | None = None, sandbox: bool | None = None) -> dict:
    """Whether an attestation archive holds (``rerun``: run it again and compare — in the sandbox with
    ``sandbox``, None: as ``.backbeatrc`` says); ``ok`` False on any mismatch."""
    from backbeat.attestation.verify import verify

    return verify(archive, data, rerun, expect, sandbox)


def import_attestation(archive: str | os.PathLike, prefix: str | os.PathLike) -> dict:
    """Add an attestation's assets to a prefix, refusing any that conflicts with the prefix's (nothing written)."""
    from backbeat.attestation.importing import import_archive

    return import_archive(archive, prefix)
