"""OpenAI's error shape, and the refusal every malformed request becomes (pure)."""

from __future__ import annotations

from typing import Any


def error_body(message: str, kind: str, code: str | None = None, param: str | None = None) -> dict[str, Any]:
    """OpenAI's error shape."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


class RequestError(ValueError):
    """The request is not acceptable: HTTP `status` (400 unless said), naming `param` where one applies."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None, status: int = 400) -> None:
        super().__init__(message)
        self.param = param
        self.code = code
        self.status = status

    def body(self) -> dict[str, Any]:
        """The error as OpenAI writes it."""
        return error_body(str(self), "invalid_request_error", self.code, self.param)


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def shown(value: Any) -> str:
    """A value for an error message, cut short: a client may send megabytes."""
    if is_int(value) and value.bit_length() > 64:
        return "an integer past 64 bits"  # repr() of a giant integer is slow, then refused
    text = repr(value)
    return text if len(text) <= 40 else text[:40] + "..."
