"""The engine: the batching loop that drives the shards, per-request state, the startup handshake and health."""
