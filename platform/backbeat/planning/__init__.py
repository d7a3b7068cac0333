"""Planning: an experiment becomes a plan of jobs with cache keys (pure data).

Lives here: the plan model (``model``: datasets, jobs, inputs, outputs, keys), what planning
accumulates (``context``: dataformats, libraries, database roots, toolchain wiring), the
planner (``planner``), the planning of toolchain loops (``loops``) and which jobs run and why
(``selection``).  Planning reads no configuration: database roots are passed in.
May import: ``core``, ``declarations``, ``data``, ``cache``.
"""
