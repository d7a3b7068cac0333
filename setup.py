"""The optional C extension of the per-unit path (backbeat.data.compiled); everything else is in
pyproject.toml.  ``optional=True``: without a working compiler the install succeeds and the
pure-Python path runs."""

from setuptools import Extension, setup

setup(ext_modules=[Extension("backbeat.data._unitpath", ["platform/backbeat/data/_unitpath.c"],
                             optional=True)])
