"""adt training engine: parameter server, workers, data, checkpoints, events. No UI imports."""
