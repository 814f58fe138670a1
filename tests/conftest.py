"""Shared pytest configuration."""

import os

from hypothesis import settings

# The suite runs stages eagerly (a cold torch.compile of a step takes about 25 s on 2 cores, and
# each test's peers start with an empty cache); the compile tests ask for it themselves. The
# first carries the mode to shards made in this process and its children, the second to peers.
os.environ.setdefault("EDGESHARD_COMPILE", "off")
os.environ.setdefault("EDGESHARD_PEER_COMPILE", "off")

# This machine is shared and noisy: time limits on single examples only produce flaky failures.
settings.register_profile("edgeshard", deadline=None)
settings.load_profile("edgeshard")

# The engine's fixtures (default model, transformers' reference) serve tests/peer and tests/daemon;
# one plugin module keeps their session-scoped fixtures single.
pytest_plugins = ["tests.engine_fixtures"]
