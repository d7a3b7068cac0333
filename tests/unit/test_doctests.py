"""The examples in module docstrings are tests too (pure modules document themselves by example)."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import backbeat

MODULES = sorted(m.name for m in pkgutil.iter_modules(backbeat.__path__, "backbeat.")
                 if m.name not in ("backbeat.__main__", "backbeat.execution.dask_executor"))


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0, f"{result.failed} docstring example(s) of {name} failed"
