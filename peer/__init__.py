"""The EdgeShard peer: daemon, model shards, wire, sessions, API, CLI (imports stay lazy)."""
