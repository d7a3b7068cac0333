"""``python -m backbeat.cli``: the command line."""

from backbeat.cli.client import entry

entry()
