"""The Optuna sweeper of ``python train.py -m sweep=...`` (registered with Hydra by ``src/hydra_plugins``), and the
trial each training job of a sweep runs as. Uses the layers below it."""
