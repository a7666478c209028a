"""__JOB_NAME__'s model: a small Keras MLP classifier.

The server calls ``build_model`` (job.yml ``server.model``) for the first
global model and saves the final one as ``models/global_final.keras``; each
site builds the same model and trains it.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
from data import CLASSES, FEATURES  # noqa: E402

#: Units of the hidden layer.
HIDDEN = 32


def build_model(learning_rate: float = 0.01) -> keras.Model:
    """Dense(HIDDEN, relu) -> Dense(CLASSES) logits; Adam, sparse cross-entropy."""
    model = keras.Sequential(
        [
            keras.Input(shape=(FEATURES,)),
            keras.layers.Dense(HIDDEN, activation="relu"),
            keras.layers.Dense(CLASSES),
        ]
    )
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model
