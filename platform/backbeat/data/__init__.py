"""Data: values, columnar batches and the files and frames that carry them.

Lives here: typed values with BEAT's semantics (``values``), columnar batches (``batch``),
HDF5 cache files (``cachefile``: format and digest; ``cachewriter``, ``contentdigest``, ``h5objects``, ``chunkwriter``, ``cachereader``), the ZeroMQ wire format (``wire``),
database view index files (``dbindex``), their columnar tables (``indextable``), the entries a view reads from them (``entries``) and the names of an index's files (``indexfiles``).
May import: ``core``, ``declarations``.
"""
