"""``python -m backbeat``: the command line."""

from backbeat.cli import entry

entry()
