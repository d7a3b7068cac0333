class Algorithm:
    """Sequential: called once per test flower; models come from another channel."""

    def prepare(self, data_loaders):
        # The models live on the "train" channel: read them once, up front.
        loader = data_loaders.loaderOf("lda")
        data, _, _ = loader[0]
        self.normaliser = data["normaliser"]
        self.lda = data["lda"]
        return True

    def process(self, inputs, data_loaders, outputs):
        x = linalg.normalise(  # noqa: F821 - injected library
            inputs["measurements"].data.value, self.normaliser.mean, self.normaliser.std
        )
        outputs["scores"].write({"value": self.lda.weights @ x + self.lda.biases})
        return True
