"""Planning: an experiment becomes a plan of block jobs with cache keys (pure data).

Lives here: the planner (``planner``: jobs, datasets, keys), which jobs run and why
(``selection``), and the planning of toolchain loops (``loops``).
May import: ``core``, ``declarations``, ``data``, ``cache``.
"""
