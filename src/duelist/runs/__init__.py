"""runs: the run dir (its layout, reads and atomic writes; old saved configs upgraded as they are read), the registry
of finished runs, and resumable training states. Needs core."""
