"""Data: values, columnar batches and the files and frames that carry them.

Lives here: typed values with BEAT's semantics (``values``), columnar batches (``batch``),
HDF5 cache files (``cachefile``: format and digest; ``cachewriter``, ``cachereader``), the ZeroMQ wire format (``wire``)
database view index files (``dbindex``) and their columnar tables (``indextable``).
May import: ``core``, ``declarations``.
"""
