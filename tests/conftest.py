"""Shared pytest configuration."""

from hypothesis import settings

# This machine is shared and noisy: time limits on single examples only produce flaky failures.
settings.register_profile("edgeshard", deadline=None)
settings.load_profile("edgeshard")
