"""The examples in module docstrings are tests too (pure modules document themselves by example)."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import backbeat

#: every module of every subpackage (``__main__`` modules run the CLI when imported; prototypes
#: are templates copied into prefixes; the Dask executor needs the optional ``dask`` extra)
MODULES = sorted(m.name for m in pkgutil.walk_packages(backbeat.__path__, "backbeat.")
                 if not m.name.endswith("__main__") and ".prototypes" not in m.name
                 and m.name != "backbeat.execution.dask_executor")


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0, f"{result.failed} docstring example(s) of {name} failed"
