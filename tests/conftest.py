"""Shared pytest configuration."""

from hypothesis import settings

# This machine is shared and noisy: time limits on single examples only produce flaky failures.
settings.register_profile("edgeshard", deadline=None)
settings.load_profile("edgeshard")

# The engine's fixtures (default model, transformers' reference) serve tests/peer and tests/daemon;
# one plugin module keeps their session-scoped fixtures single.
pytest_plugins = ["tests.engine_fixtures"]
