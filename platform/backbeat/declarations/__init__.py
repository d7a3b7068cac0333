"""Declarations: the assets of a prefix, validated and hashed.

Lives here: locating asset files (``prefix``), JSON Schemas (``schema``), the ``Catalog``
that loads, validates and hashes each asset once (``catalog``, with the explicit table of
per-kind checkers), one module per asset kind (``dataformat``, ``library``, ``algorithm``,
``protocoltemplate``, ``database``, ``toolchain``, ``experiment``, ``plotter``,
``plotterparameter``), editing assets (``assets``: create, version, fork, rm, diff) and
drawing toolchains and experiments (``graph``).
May import: ``core``.
"""
