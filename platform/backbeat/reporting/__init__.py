"""Reporting: results people can look at and compare — across experiments, runs and sweeps.

Lives here: the one adapter to the engine's public functions (``engine``: running, cached
results, cache states, provenance records, audit, plots — the only module that imports the
layers it reads, so that their restructuring is a small edit here), experiment name
patterns (``patterns``), running several experiments with one summary (``runs``), live
progress files of runs in progress (``live``), comparison tables (``comparison``), parameter
sweeps (``sweep``), run history (``history``), the drawn graph and charts as SVG (``layout``,
``charts``), the pages (``pages``: data gathered for one page, rendered with Jinja2
``templates/``; ``static/`` holds the site's CSS and JavaScript), the static site (``site``)
and the live, read-only HTTP server (``server``).
May import: every layer below (``core`` … ``plotting``); nothing above (``api``, ``cli``).
"""
