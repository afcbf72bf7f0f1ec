"""kopf wiring, API clients, status writing, roll-up, the local CLI, settings, metrics and probes."""
