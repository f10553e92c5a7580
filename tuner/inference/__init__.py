"""The commands that use a tuned model: `evaluate`, `predict` and `export`. They read an
experiment's files (results.experiment) and run its selected models with torch on this
machine: they need no Ray and no cluster, and import nothing of the tuner that does (the
layering test holds them to it). Every one gets a trial's model from `model`."""

# The commands' defaults, here so that the command line states them without importing
# torch (every module below does).
EVALUATE_BATCH_SIZE = 16
PREDICT_BATCH_SIZE = 8
EXPORT_FORMATS = ("torchscript", "onnx")  # the first is the default
