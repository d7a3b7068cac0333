"""``python -m backbeat.remote``: run one block job described on standard input (Dask workers).

A stable entry point; the runner itself is :mod:`backbeat.execution.remote`.
"""

from backbeat.execution.remote import main

if __name__ == "__main__":
    main()
