"""Deep supervision: auxiliary outputs at lower decoder levels add to the training loss.

nnU-Net's deep supervision scores the decoder's lower-resolution outputs too, weighted
1/2^i for the level i steps below full resolution, the weights normalized to sum to 1.
Here each auxiliary output is upsampled to full resolution (nearest) and scored against
the same mask, so the data pipeline stays as it is. The auxiliary outputs exist only
while training: inference, validation and every exported model use the main output.
"""

from __future__ import annotations

from typing import Any

import keras


class DeepSupervision(keras.Model):
    """Trains ``network``'s first output with its auxiliary outputs added to the loss.

    Called in training, it returns all outputs (the loss needs them); otherwise only the
    main one, so validation, metrics and prediction see a one-output network. Only its
    weights are ever saved (fold checkpoints); exports hold :meth:`inference_network`.

    Args:
        network: A functional model whose outputs are the main probabilities followed by
            auxiliary ones, finest first.
    """

    def __init__(self, network: keras.Model, **kwargs: Any):
        super().__init__(**kwargs)
        self.network = network
        self.built = True  # the network is built, and the wrapper has no weights of its own
        levels = len(network.outputs)
        weights = [0.5 ** i for i in range(levels)]
        self.loss_weights_by_level = [w / sum(weights) for w in weights]

    @property
    def input_shape(self):
        return self.network.input_shape

    def call(self, inputs, training: bool = False):
        outputs = self.network(inputs, training=training)
        return tuple(outputs) if training else outputs[0]

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        if not isinstance(y_pred, tuple):
            return super().compute_loss(x, y, y_pred, sample_weight, training)
        total = None
        for weight, output in zip(self.loss_weights_by_level, y_pred, strict=True):
            level = weight * super().compute_loss(x, y, output, sample_weight, training)
            total = level if total is None else total + level
        return total

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        main = y_pred[0] if isinstance(y_pred, tuple) else y_pred
        return super().compute_metrics(x, y, main, sample_weight)

    def inference_network(self) -> keras.Model:
        """The network with its main output only (shares the weights)."""
        return keras.Model(self.network.input, self.network.outputs[0],
                           name=self.network.name)


def inference_network(model: keras.Model) -> keras.Model:
    """``model`` without auxiliary outputs (itself when it has none)."""
    return model.inference_network() if isinstance(model, DeepSupervision) else model
