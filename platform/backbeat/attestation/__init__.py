"""Attestations: one experiment, its code, data manifests and results, in a portable archive.

Lives here: the archive format — writing it and reading it back safely, an untrusted input
(``archive``), what the archive says about an experiment, derived from its provenance record
(``description``), the environment each block ran in (``environments``), ``experiments
export`` (``export``), ``attest verify`` (``verify``, its re-run in ``rerun``) and ``attest
import`` (``importing``).  ``docs/attestations.md`` specifies the format.
May import: every layer below (``core`` … ``audit``).
"""
