"""The model engine: torch, no asyncio. Model files read tensor by tensor (`files`), a stage's
units with their KV caches (`shard`), sampling, text around the token stream, devices and the
device profile. Import the submodules; this package imports nothing heavy by itself."""
