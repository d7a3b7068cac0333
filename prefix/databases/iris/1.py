"""Views of the iris database (Fisher's iris flowers, UCI version).

The 150 flowers are read from ``iris.csv``: first from the database's
``root_folder`` and, when that folder does not hold the file (the default
``/backbeat/databases/iris`` usually does not exist), from the ``data/``
folder shipped next to this file, which keeps the demo prefix self-contained.

Protocol ``train_test`` splits every species in two halves: the flowers with
an even rank inside their species go to ``train``, the odd ones to ``test``
(25 flowers per species in each set).  Inside a set the species alternate
(setosa, versicolor, virginica, setosa, ...) so that no two consecutive
entries carry the same species: BEAT merges consecutive entries with equal
values into one data unit, and here every flower should be its own unit.
"""

import collections
import csv
import os

import numpy
from beat.backend.python.database import View

SPECIES = ("setosa", "versicolor", "virginica")

Entry = collections.namedtuple("Entry", ["flower", "measurements", "species"])


def _shipped_folder():
    # The platform loads this file with exec(), so __file__ may be missing;
    # the code object always knows the file it was compiled from.
    return os.path.join(
        os.path.dirname(os.path.abspath(_shipped_folder.__code__.co_filename)), "data"
    )


def read_flowers(root_folder):
    """Returns [(measurements, species label)] in file order (150 rows)."""

    path = os.path.join(root_folder, "iris.csv")
    if not os.path.exists(path):
        path = os.path.join(_shipped_folder(), "iris.csv")
    flowers = []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            measurements = [
                float(row[k])
                for k in ("sepal_length", "sepal_width", "petal_length", "petal_width")
            ]
            flowers.append((measurements, SPECIES.index(row["species"])))
    return flowers


class IrisSplit(View):
    """One half of the flowers; parameter ``subset`` is ``train`` or ``test``."""

    def index(self, root_folder, parameters):
        subset = parameters["subset"]
        if subset not in ("train", "test"):
            raise ValueError("subset must be 'train' or 'test', not %r" % subset)
        parity = 0 if subset == "train" else 1

        by_species = {label: [] for label in range(len(SPECIES))}
        for number, (measurements, label) in enumerate(read_flowers(root_folder)):
            by_species[label].append((number, measurements))

        chosen = {
            label: [x for rank, x in enumerate(rows) if rank % 2 == parity]
            for label, rows in by_species.items()
        }
        entries = []
        for rank in range(min(len(rows) for rows in chosen.values())):
            for label in sorted(chosen):
                number, measurements = chosen[label][rank]
                entries.append(Entry(number, measurements, label))
        return entries

    def get(self, output, index):
        obj = self.objs[index]
        if output == "measurements":
            return {"value": numpy.array(obj.measurements, dtype=numpy.float64)}
        if output == "species":
            return {"label": numpy.int32(obj.species), "name": SPECIES[obj.species]}
        raise KeyError(output)
