import numpy


class Algorithm:
    """Autonomous: sees all training flowers at once, writes a single model."""

    def process(self, data_loaders, outputs):
        loader = data_loaders.loaderOf("measurements")
        samples = numpy.array(
            [loader[i][0]["measurements"].value for i in range(loader.count())]
        )
        mean, std = linalg.mean_std(samples)  # noqa: F821 - injected library
        # one data unit covering the whole training set
        outputs["model"].write({"mean": mean, "std": std}, loader.data_index_end)
        return True
