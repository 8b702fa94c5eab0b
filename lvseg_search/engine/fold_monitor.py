"""What a fold's training reports while it runs: batch times, a NaN loss, one line per
epoch."""

from __future__ import annotations

import math
import time

import keras


class FoldMonitor(keras.callbacks.Callback):
    """Times training batches, stops on a NaN loss, and prints one line per epoch.

    The first batch of a fit is timed apart as well: for a new model it includes tracing
    and optimizing the train step's graph, seconds where a batch takes a fraction of one.
    """

    def __init__(self, describe, total_epochs: int):
        super().__init__()
        self.describe = describe
        self.total_epochs = total_epochs
        self.batch_seconds = 0.0
        self.first_batch_seconds: float | None = None
        self.nan_epoch: int | None = None
        self._t0 = 0.0
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_begin(self, batch, logs=None):
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        seconds = time.perf_counter() - self._t0
        self.batch_seconds += seconds
        if self.first_batch_seconds is None:
            self.first_batch_seconds = seconds
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            self.nan_epoch = self._epoch
            self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        if self.describe is not None:
            print(f"{self.describe()} epoch {epoch + 1}/{self.total_epochs}  "
                  f"loss {logs.get('loss', float('nan')):.4f}  "
                  f"dice {logs.get('dice', float('nan')):.3f}  "
                  f"val_dice {logs.get('val_dice', float('nan')):.3f}", flush=True)
