"""One trial: config -> data -> model -> fit -> metrics. Importable without Ray, except
for the thin adapter in `trainable.tune_adapter`."""
