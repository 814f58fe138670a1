"""A small client of a peer's user API (the REPL, `edgeshard status`, `edgeshard cluster`).

Standard library only (urllib): the commands that use it need no event loop, and any OpenAI
client works against the same endpoints.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from ..errors import PeerError

DEFAULT_API = "http://127.0.0.1:7421"


class ApiError(PeerError):
    """The peer's API answered with an error, or could not be reached."""


def _open(request: urllib.request.Request, timeout_s: float) -> Any:
    try:
        return urllib.request.urlopen(request, timeout=timeout_s)
    except urllib.error.HTTPError as error:
        try:
            message = json.loads(error.read())["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = error.reason
        raise ApiError(f"HTTP {error.code}: {message}") from None
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise ApiError(f"cannot reach {request.full_url}: {reason}") from None


def _headers(api_key: str) -> dict[str, str]:
    """The API key goes as OpenAI's clients send theirs."""
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def get_status(api: str, timeout_s: float = 10.0, api_key: str = "") -> dict[str, Any]:
    """GET /v1/status."""
    request = urllib.request.Request(api.rstrip("/") + "/v1/status", headers=_headers(api_key))
    with _open(request, timeout_s) as response:
        status: dict[str, Any] = json.load(response)
        return status


def texts(chunks: Iterable[dict[str, Any]]) -> Iterator[str]:
    """The text pieces of streamed chunks."""
    for chunk in chunks:
        content = chunk["choices"][0]["delta"].get("content")
        if content:
            yield content


def stream_chunks(
    api: str,
    messages: Sequence[dict[str, str]],
    max_tokens: int = 256,
    temperature: float = 0.0,
    seed: int | None = None,
    timeout_s: float = 600.0,
    api_key: str = "",
) -> Iterator[dict[str, Any]]:
    """The streamed completion's chunks as JSON objects (the last carries usage and fail-overs)."""
    body: dict[str, Any] = {
        "messages": list(messages),
        "max_tokens": max_tokens,
        "temperature": temperature,
        "stream": True,
    }
    if seed is not None:
        body["seed"] = seed
    request = urllib.request.Request(
        api.rstrip("/") + "/v1/chat/completions",
        json.dumps(body).encode(),
        headers={"Content-Type": "application/json", **_headers(api_key)},
    )
    with _open(request, timeout_s) as response:
        for raw in response:
            line = raw.decode().strip()
            if not line.startswith("data: "):
                continue
            data = line.removeprefix("data: ")
            if data == "[DONE]":
                return
            chunk = json.loads(data)
            if "error" in chunk:
                raise ApiError(chunk["error"]["message"])
            yield chunk


def describe_status(status: dict[str, Any]) -> str:
    """A readable summary of a peer's /v1/status."""
    security = status.get("security") or {}
    guard = (
        "OPEN CLUSTER (no secret)"
        if security.get("mode") == "open"
        else "secret" + (", TLS" if security.get("tls") else "")
    )
    lines = [
        f"peer {status.get('name', status['peer'])} ({status['peer']}) at {status['address']}, "
        f"cluster {status['cluster']!r} [{guard}], "
        f"{'ready' if status['ready'] else 'not ready: ' + str(status['reason'])}"
    ]
    for peer in status["peers"]:
        note = f" (left out: {peer['excluded']})" if peer.get("excluded") else ""
        lines.append(
            f"  {peer.get('name', peer['id']):<12} {peer['id']:<16} {peer['health']:<8} {peer['address']:<28} "
            f"{peer['memory_bytes'] / 2**30:6.2f} GiB  {peer['ms_per_token_alone']:8.1f} ms/token alone{note}"
        )
    plan = status.get("plan")
    if plan:
        stages = " → ".join(f"{s['device']}[{s['start']}:{s['end']})" for s in plan["stages"])
        lines.append(
            f"plan {plan['plan_id']} (layout {plan['layout_id']}, {plan['objective']}): {stages}; "
            f"predicted {plan['latency_ms']:.1f} ms/token, {plan['throughput_tps']:.1f} tokens/s pipelined"
        )
    return "\n".join(lines)
