"""What the API needs from a peer (`Backend`): the daemon's node is one; a test can bring another."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from transformers import PreTrainedTokenizerBase

from ..pipeline.layouts import ReadyLayout
from ..pipeline.origin import Origin


class Backend(Protocol):
    """What the API needs from a peer."""

    @property
    def model_name(self) -> str:
        """The model id shown to clients."""

    @property
    def context(self) -> int:
        """Positions a session may hold (prompt + answer)."""

    @property
    def origin(self) -> Origin:
        """Where sessions start from."""

    def tokenizer(self) -> PreTrainedTokenizerBase:
        """The model's tokenizer (loaded once)."""

    def stop_ids(self) -> Sequence[int]:
        """The model's end-of-sequence ids."""

    async def wait_ready_layout(self, timeout_s: float) -> ReadyLayout:
        """A layout every stage serves, waiting up to `timeout_s` (NoRouteError says why not)."""

    def status(self) -> dict[str, Any]:
        """The peer's status document."""
