"""The commands that use a tuned model: `evaluate`, `predict` and `export`. They read an
experiment's files (results.experiment) and run its selected models with torch on this
machine: they need no Ray and no cluster, and import nothing of the tuner that does (the
layering test holds them to it). Every one gets a trial's model from `model`."""

import enum

# The commands' choices and defaults, here so that the command line states them without
# importing torch (every module below does).


class Part(enum.StrEnum):
    """The part of the experiment's split `evaluate` scores (the test part by default)."""

    VALIDATION = "validation"
    TEST = "test"


class Tta(enum.StrEnum):
    """Test-time augmentation: none, or the mean with the horizontally flipped pass."""

    NONE = "none"
    FLIP = "flip"


ENSEMBLE = 1  # trials whose probabilities are averaged: the best alone
EVALUATE_BATCH_SIZE = 16
PREDICT_BATCH_SIZE = 8
