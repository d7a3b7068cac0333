"""A plotter: ``process`` receives the data to plot and returns the image bytes."""


class Plotter:
    def setup(self, parameters):
        self.parameters = parameters
        return True

    def process(self, inputs):
        raise NotImplementedError("draw the data and return the image as bytes")
