"""core: what every layer uses and nothing of duelist's own: errors, logs, languages, files, config schemas, metrics,
batching, tracking, plots, hardware (device, dtype, autocast, bitsandbytes) and the time budget."""
