"""The driver: config, placement, the training loop, evaluation, metrics, CLI and job entry points."""
