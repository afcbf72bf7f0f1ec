"""One module per kind: spec + observed host facts -> actions and per-node status. No kopf, no API client."""
