"""Runtime: what runs inside a block process, a database provider or an indexing job.

Lives here: the typed job descriptions a process receives (``spec``: ``BlockSpec``,
``DatasetSpec``, ``ProviderSpec``), BEAT's algorithm API (``inputs``, ``outputs``,
``dataloaders``), driving an algorithm (``driver``), data sources and block-to-block streams
(``sources``, ``streams``), the loop channel between a loop's processor and evaluator
(``loopchannel``), loading user code (``codeloader``, ``compat``: the ``beat.backend.python``
import shim), the block process entry point (``blockrun``), database views (``dbprovider``) and
what the fork server's zygote imports before forking them (``preload``), and the C
allocator's thresholds that let a process reuse the memory of its batches (``allocator``).
May import: ``core``, ``declarations``, ``data``, ``processes`` (the control client, outcomes,
the zmq context).
"""
