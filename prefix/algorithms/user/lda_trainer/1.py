import numpy


class Algorithm:
    """Autonomous: reads the whole training set, writes one LDA model."""

    def setup(self, parameters):
        self.shrinkage = float(parameters["shrinkage"])
        return True

    def process(self, data_loaders, outputs):
        # measurements, species and normaliser share the "train" channel, so
        # they come through one data loader: entry i holds the measurements and
        # species of flower i and the (single) normaliser model covering it.
        loader = data_loaders.loaderOf("measurements")
        samples, labels, names = [], [], {}
        for i in range(loader.count()):
            data, _, _ = loader[i]
            normaliser = data["normaliser"]
            samples.append(
                linalg.normalise(  # noqa: F821 - injected library
                    data["measurements"].value, normaliser.mean, normaliser.std
                )
            )
            labels.append(int(data["species"].label))
            names[int(data["species"].label)] = data["species"].name

        n_classes = max(labels) + 1
        weights, biases = linalg.lda(  # noqa: F821 - injected library
            numpy.array(samples), numpy.array(labels), n_classes, self.shrinkage
        )
        outputs["model"].write(
            {
                "weights": weights,
                "biases": biases,
                "class_names": numpy.array([names[k] for k in range(n_classes)]),
            },
            loader.data_index_end,
        )
        return True
