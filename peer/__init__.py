"""The EdgeShard peer, in layers that import only downwards (docs/ARCHITECTURE.md):

errors, wire   the root exception; sans-I/O frames and the sampling parameters they carry
model/         torch, no asyncio: model files, shard, sampling, text, devices, profile
pipeline/      asyncio + aiohttp: links, stage server, origin, fail-over, local clusters
api/           the OpenAI-compatible handlers (against a protocol), schemas, client
daemon/        edgeshard-peer: config, view-to-cluster, pure lifecycle, node, status
cli/           edgeshard: each subcommand imports its heavy modules only when it runs
"""
