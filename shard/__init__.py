"""The model shard: a ``generate.v3`` gRPC server (TGI's protocol) over a paged KV pool the router fills.

Read it in this order: ``cli`` -> ``factory`` (wiring) -> ``server`` (RPCs) -> ``model_runner`` (one step)
-> ``batch`` / ``inputs`` (plain-data batch state and flat step arrays) -> ``models`` / ``layers`` (attention
via ``flash_kernels`` only) -> ``sampling`` / ``detokenize`` -> ``kv_cache`` / ``loader``.
``validation`` holds the checks that run before anything is written; ``convert`` is the pb <-> domain
boundary; ``demo_model`` builds the offline HF folders used by tests and the default serve command;
``bench`` is ``prism-shard bench``.
"""
