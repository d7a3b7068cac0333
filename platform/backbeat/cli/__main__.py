"""``python -m backbeat.cli``: the command line."""

from backbeat.cli.main import entry

entry()
