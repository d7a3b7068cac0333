"""A sequential algorithm (API v2): ``process`` is called once per data unit of the group."""


class Algorithm:
    def setup(self, parameters):
        self.parameters = parameters
        return True

    def process(self, inputs, data_loaders, outputs):
        outputs["out_data"].write(inputs["in_data"].data)
        return True
