"""backbeat: declarative, reproducible experiments, compatible with BEAT prefixes."""

from __future__ import annotations

__version__ = "0.1.0"
