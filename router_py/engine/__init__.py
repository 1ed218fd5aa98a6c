"""The engine: the batching loop that drives the shards, per-request state, budgets, startup and health."""
