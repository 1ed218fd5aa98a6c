"""The shard client: plain-data generate.v3 messages, the gRPC client, and a fake shard for tests."""
