"""core: what every layer uses and nothing of duelist's own: errors, logs, languages, files, config schemas, what
Hydra needs before it composes (hydra_setup) and the command line's typo check, metrics, batching, tracking, plots,
hardware (device, dtype, autocast, bitsandbytes) and the time budget."""
