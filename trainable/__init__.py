"""One trial: config -> data -> model -> fit -> metrics and checkpoints. It imports only
`results` below it, and Ray only in its adapter, `trainable.tune_adapter`."""
