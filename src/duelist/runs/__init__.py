"""runs: the run dir (its layout, reads and atomic writes), the registry of finished runs, and resumable training
states. Needs core."""
