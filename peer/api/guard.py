"""Who may use the API: the API key (OpenAI's `Authorization: Bearer`), the dashboard's cookie
for its own GETs, and, for an API without a key (only ever on loopback), requests addressed to a
loopback name only, so a web page that points its own domain at 127.0.0.1 (DNS rebinding)
cannot use or read it."""

from __future__ import annotations

import hmac
import ipaddress

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from .dashboard import dashboard_admits
from .errors import RequestError
from .telemetry import Telemetry


def refuse(error: RequestError) -> web.Response:
    """A refusal in OpenAI's error shape."""
    return web.json_response(error.body(), status=error.status)


def _authorized(header: str, key: bytes) -> bool:
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return False
    try:
        given = token.strip().encode("utf-8", "surrogateescape")  # aiohttp's decoding of odd bytes
    except UnicodeEncodeError:
        return False
    return hmac.compare_digest(given, key)  # constant time: the key cannot be guessed byte by byte


def _loopback_name(host: str | None) -> bool:
    """Whether a request's Host names this machine's loopback (not a domain that resolves to it)."""
    host = (host or "").lower().strip("[]")
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def guard(api_key: str, telemetry: Telemetry) -> Middleware:
    """A middleware: the API key check (when there is one; without one, the loopback-name
    check), and aiohttp's own 404/405 answers rewritten in OpenAI's error shape so that clients
    can read them."""
    key = api_key.encode()

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not key and not _loopback_name(request.url.host):
            message = f"this API answers requests to a loopback name only, not {request.host!r}"
            return refuse(RequestError(message, code="host_not_allowed", status=403))
        # The dashboard's page and, with its cookie, its data on GET (a browser cannot send the header).
        if key and not (_authorized(request.headers.get("Authorization", ""), key) or dashboard_admits(request, key)):
            telemetry.count("unauthorized")
            given = "Authorization" in request.headers
            message = "Incorrect API key provided" if given else "No API key: send Authorization: Bearer <api key>"
            response = refuse(RequestError(message, code="invalid_api_key", status=401))
            response.headers["WWW-Authenticate"] = "Bearer"
            return response
        try:
            return await handler(request)
        except web.HTTPException as error:
            if error.status < 400:
                raise
            if error.status == 404:
                message, code = f"Unknown request URL: {request.method} {request.path}", "unknown_url"
            elif error.status == 405:
                message, code = f"{request.method} is not allowed on {request.path}", "method_not_allowed"
            else:
                message, code = error.reason, None
            response = refuse(RequestError(message, code=code, status=error.status))
            if "Allow" in error.headers:
                response.headers["Allow"] = error.headers["Allow"]
            return response

    return check
