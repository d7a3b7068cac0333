"""JSON Schema validation of declarations (being written; see docs/architecture.md)."""

from __future__ import annotations

from typing import Any

from .errors import Problem


def validate(kind: str, declaration: Any) -> list[Problem]:
    return []
