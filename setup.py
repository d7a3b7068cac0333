"""The optional C extension of the per-unit path (backbeat.data.compiled); everything else is in
pyproject.toml.  ``optional=True``: without a working compiler the install succeeds and the
pure-Python path runs.  The build carries the sha256 of its source (``SOURCE``): an editable install
whose ``.so`` is older than its ``.c`` is not used (``compiled._stale``)."""

import hashlib
from pathlib import Path

from setuptools import Extension, setup

SOURCE = "platform/backbeat/data/_unitpath.c"
DIGEST = hashlib.sha256((Path(__file__).parent / SOURCE).read_bytes()).hexdigest()

setup(ext_modules=[Extension("backbeat.data._unitpath", [SOURCE], optional=True,
                             define_macros=[("UNITPATH_SOURCE", f'"{DIGEST}"')])])
