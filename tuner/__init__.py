"""The top: the command line, the Ray driver that runs a sweep, and the commands that use a
tuned model (tuner.inference: evaluate, predict, export). It imports every package below
it; none imports it."""
