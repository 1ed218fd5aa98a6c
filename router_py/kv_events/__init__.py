"""KV cache events for external routers (Dynamo's KV router, llm-d's precise prefix-cache scorer, SGLang's
gateway): the router owns the prefix tree, so it publishes what the tree stores and evicts, per block hash, in
vLLM's format (docs/kv-events.md).

    config.py     --kv-events-config (vLLM's keys)
    wire.py       the msgpack EventBatch / BlockStored / BlockRemoved / AllBlocksCleared
    collector.py  the tree's observer: one batch per scheduling step
    publisher.py  ZMQ PUB (topic, seq, payload) and the replay ROUTER, on a thread

Submodules are imported where used, so a router without events never imports zmq."""
