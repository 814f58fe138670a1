"""The pipeline: asyncio + aiohttp over the model engine. Persistent WebSocket links
(`links`), the stage server (`stage`), the origin that drives a session (`origin`), fail-over by
replay (`failover`) and local clusters of stage servers (`local`, `stage_process`)."""
