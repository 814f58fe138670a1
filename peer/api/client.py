"""A small client of a peer's user API (the REPL, `edgeshard status`, `edgeshard cluster`).

Standard library only (urllib, http.client): the commands that use it need no event loop, and
any OpenAI client works against the same endpoints.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from ..errors import PeerError

DEFAULT_API = "http://127.0.0.1:7421"
CONNECT_TIMEOUT_S = 10.0


class ApiError(PeerError):
    """The peer's API answered with an error, or could not be reached.

    `status` is the HTTP status (None when no answer came: `unreachable`, or an error that
    arrived inside a stream), `code` OpenAI's error code when the body had one, `retry_after_s`
    the Retry-After of a 429."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        unreachable: bool = False,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.unreachable = unreachable
        self.retry_after_s = retry_after_s


def _http_error(status: int, reason: str, body: bytes, retry_after: str | None) -> ApiError:
    """An error answer as an ApiError: "HTTP <status>: <message of OpenAI's error body>"."""
    message, code = reason, None
    try:
        error = json.loads(body)["error"]
        message, code = str(error["message"]), error.get("code")
    except (ValueError, KeyError, TypeError, AttributeError):
        pass
    try:
        retry = float(retry_after) if retry_after is not None else None
    except ValueError:
        retry = None
    return ApiError(f"HTTP {status}: {message}", status=status, code=code, retry_after_s=retry)


def _open(request: urllib.request.Request, timeout_s: float) -> Any:
    try:
        return urllib.request.urlopen(request, timeout=timeout_s)
    except urllib.error.HTTPError as error:
        raise _http_error(error.code, str(error.reason), error.read(), error.headers.get("Retry-After")) from None
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise ApiError(f"cannot reach {request.full_url}: {reason}", unreachable=True) from None
    except (http.client.HTTPException, ValueError) as error:
        # Something answered, but not HTTP (a TLS or peer port, another service: BadStatusLine),
        # or the URL cannot be opened (InvalidURL for "host:None", an unknown scheme).
        reason = f"{type(error).__name__}: {str(error).strip()[:80]}"
        raise ApiError(f"no HTTP answer from {request.full_url} ({reason})", unreachable=True) from None


def _headers(api_key: str) -> dict[str, str]:
    """The API key goes as OpenAI's clients send theirs."""
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def get_json(api: str, path: str, timeout_s: float = 10.0, api_key: str = "") -> tuple[Any, http.client.HTTPMessage]:
    """GET `path` of the API: the JSON body and the answer's headers (doctor reads `Date`).
    ApiError for an error status, no (HTTP) answer, a broken read, or a body that is not JSON."""
    url = api.rstrip("/") + path
    try:
        request = urllib.request.Request(url, headers=_headers(api_key))
    except ValueError as error:  # no scheme: "unknown url type"
        raise ApiError(f"not an http(s) URL: {url} ({error})") from None
    with _open(request, timeout_s) as response:
        try:
            body = response.read()
        except (OSError, http.client.HTTPException) as error:
            reason = str(error) or type(error).__name__
            raise ApiError(f"the answer from {url} broke off: {reason}", unreachable=True) from None
        headers: http.client.HTTPMessage = response.headers
    try:
        return json.loads(body), headers
    except ValueError as error:  # also UnicodeDecodeError
        raise ApiError(f"{url} did not answer JSON ({error}): not an EdgeShard API?") from None


def get_status(api: str, timeout_s: float = 10.0, api_key: str = "") -> dict[str, Any]:
    """GET /v1/status."""
    status, _ = get_json(api, "/v1/status", timeout_s, api_key)
    if not isinstance(status, dict):
        raise ApiError(f"{api.rstrip('/')}/v1/status answered {type(status).__name__}, not a status object")
    return status


def texts(chunks: Iterable[dict[str, Any]]) -> Iterator[str]:
    """The text pieces of streamed chunks."""
    for chunk in chunks:
        choices = chunk.get("choices") or [{}]
        content = (choices[0].get("delta") or {}).get("content")
        if content:
            yield content


class ChatStream:
    """One streamed chat completion (`POST /v1/chat/completions` with `stream`).

    `open()` sends the request and reads the answer's head (ApiError for an error status or no
    answer); iterating gives the chunks, OpenAI's chat.completion.chunk objects. The last chunk's
    `finish_reason`, `usage` and `edgeshard` objects stay in the attributes of the same names.
    `close()` may be called from any thread, also while another thread waits for the next chunk:
    it shuts the connection down, so the waiting read ends (the iteration just stops) and the
    peer frees the session at once."""

    def __init__(self, api: str, body: dict[str, Any], timeout_s: float = 600.0, api_key: str = "") -> None:
        self.url = api.rstrip("/") + "/v1/chat/completions"
        self.body = body
        self.timeout_s = timeout_s
        self.api_key = api_key
        self.finish_reason: str | None = None
        self.usage: dict[str, Any] | None = None
        self.edgeshard: dict[str, Any] | None = None
        self.closed = False
        self._lock = threading.Lock()
        self._connection: http.client.HTTPConnection | None = None
        self._socket: socket.socket | None = None
        self._response: http.client.HTTPResponse | None = None
        self._reading = False  # a thread is inside the iteration: it closes the connection itself

    def open(self) -> ChatStream:
        """Send the request; return once the answer's head says it streams."""
        parts = urllib.parse.urlsplit(self.url)
        kind = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ApiError(f"not an http(s) URL: {self.url}")
        connection = kind(parts.hostname, parts.port, timeout=CONNECT_TIMEOUT_S)
        headers = {"Content-Type": "application/json", "Accept": "text/event-stream", **_headers(self.api_key)}
        try:
            connection.connect()
            with self._lock:
                self._connection, self._socket = connection, connection.sock
                if self.closed:  # closed while connecting
                    connection.close()
                    raise ApiError("closed")
            connection.sock.settimeout(self.timeout_s)
            connection.request("POST", parts.path, json.dumps(self.body).encode(), headers)
            response = connection.getresponse()
        except (OSError, http.client.HTTPException) as error:
            connection.close()
            if self.closed:
                raise ApiError("closed") from None
            reason = getattr(error, "strerror", None) or error
            raise ApiError(f"cannot reach {self.url}: {reason}", unreachable=True) from None
        if response.status >= 400:
            body = response.read()
            connection.close()
            raise _http_error(response.status, response.reason, body, response.getheader("Retry-After"))
        self._response = response
        return self

    def __iter__(self) -> Iterator[dict[str, Any]]:
        response = self._response
        if response is None:
            raise ApiError("the stream is not open")
        with self._lock:
            self._reading = True
        try:
            for raw in response:
                line = raw.decode().strip()
                if not line.startswith("data: "):
                    continue
                data = line.removeprefix("data: ")
                if data == "[DONE]":
                    return
                chunk = json.loads(data)
                if "error" in chunk:
                    error = chunk["error"]
                    raise ApiError(str(error.get("message")), code=error.get("code") or error.get("type"))
                for choice in chunk.get("choices") or ():
                    self.finish_reason = choice.get("finish_reason") or self.finish_reason
                self.usage = chunk.get("usage") or self.usage
                self.edgeshard = chunk.get("edgeshard") or self.edgeshard
                yield chunk
            if not self.closed:
                raise ApiError(f"the stream from {self.url} ended before [DONE]")
        except (OSError, http.client.HTTPException, ValueError) as error:
            if self.closed:
                return  # close() ended the wait
            if isinstance(error, TimeoutError):
                raise ApiError(f"no answer from {self.url} within {self.timeout_s:.0f} s") from None
            raise ApiError(f"the stream from {self.url} broke off: {error}") from None
        finally:
            with self._lock:
                self._reading = False
            self.close()

    def close(self) -> None:
        """End the stream now (idempotent, any thread)."""
        with self._lock:
            self.closed = True
            sock, connection, reading = self._socket, self._connection, self._reading
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # wakes a read blocked in another thread
        if connection is not None and not reading:
            connection.close()

    def __enter__(self) -> ChatStream:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def chat_stream(
    api: str,
    messages: Sequence[dict[str, str]],
    max_tokens: int = 256,
    temperature: float = 0.0,
    seed: int | None = None,
    timeout_s: float = 600.0,
    api_key: str = "",
    top_p: float | None = None,
) -> ChatStream:
    """A streamed completion, not yet opened (the caller opens it, maybe on another thread)."""
    body: dict[str, Any] = {
        "messages": list(messages),
        "max_tokens": max_tokens,
        "temperature": temperature,
        "stream": True,
    }
    if seed is not None:
        body["seed"] = seed
    if top_p is not None:
        body["top_p"] = top_p
    return ChatStream(api, body, timeout_s, api_key)


def stream_chunks(*args: Any, **kwargs: Any) -> Iterator[dict[str, Any]]:
    """The chunks of `chat_stream(*args, **kwargs)`, opened and closed here (for a caller that
    reads the whole answer)."""
    with chat_stream(*args, **kwargs).open() as stream:
        yield from stream


def describe_stages(plan: dict[str, Any]) -> str:
    """A status plan's stages as people read them: device[start:end) → …"""
    stages = plan.get("stages") or ()
    return " → ".join(f"{s.get('device') or s.get('peer')}[{s['start']}:{s['end']})" for s in stages)


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
        lines.append(
            f"plan {plan['plan_id']} (layout {plan['layout_id']}, {plan['objective']}): {describe_stages(plan)}; "
            f"predicted {plan['latency_ms']:.1f} ms/token, {plan['throughput_tps']:.1f} tokens/s pipelined"
        )
    return "\n".join(lines)
