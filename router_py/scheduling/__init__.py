"""Scheduling: the contract (:mod:`.interface`), the scheduler registry and the schedulers (pure, no I/O)."""
