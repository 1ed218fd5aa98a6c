"""KV tiers in the shard: a host-memory pool and a disk tier beside the device's paged pool, and the copies
between them that the router orders (docs/kv-tiers-wire.md). The router decides what lives where; this
package only moves blocks, checks what it reads from disk, and overlaps loads with the forward."""
