"""Views of the database: ``index`` lists the data, ``get`` returns one output of one entry."""

import collections

import numpy
from beat.backend.python.database import View as BaseView

Entry = collections.namedtuple("Entry", ["data"])


class View(BaseView):
    def index(self, root_folder, parameters):
        # read the raw data under root_folder here; one entry per data unit
        return [Entry(float(i)) for i in range(10)]

    def get(self, output, index):
        obj = self.objs[index]
        if output == "data":
            return {"value": numpy.float64(obj.data)}
        raise KeyError(output)
