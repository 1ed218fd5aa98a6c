"""prism-serve router: TGI's HTTP API, validation, QAS scheduling and the batching loop (no torch)."""
