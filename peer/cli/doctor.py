"""`edgeshard doctor`: why a cluster does not form, checked from this host.

It reads the local peer's status (`--api`), browses mDNS for a moment, connects to every peer's
port, reads the other peers' statuses where their APIs answer (`--peer-api`, or the local API's
port on each peer's host), compares clocks by the HTTP `Date` header (1 s resolution: the status
carries no wall clock) and this host's free memory; `checkup.judge` concludes. Standard library
at import; zeroconf and psutil only inside the command.
"""

from __future__ import annotations

import argparse
import email.utils
import json
import os
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from ..api.client import DEFAULT_API
from .checkup import Findings, Reach, Seen, exit_code, host_port, judge, least_offset, render, to_json

CONNECT_TRIES = 3


class NoAnswer(Exception):
    """An API did not answer, or answered with an error (`status`: the HTTP status)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `edgeshard doctor`."""
    parser.add_argument("--api", default=DEFAULT_API, metavar="URL", help="the local peer's API")
    parser.add_argument(
        "--api-key",
        default=os.environ.get("EDGESHARD_API_KEY", ""),
        help="the peers' API key (default: $EDGESHARD_API_KEY)",
    )
    parser.add_argument(
        "--peer-api",
        action="append",
        default=[],
        metavar="URL",
        help="another peer's API, to compare its status and clock (repeatable; by default the local API's "
        "port is tried on each peer's host)",
    )
    parser.add_argument("--mdns-seconds", type=float, default=2.0, metavar="S", help="how long to browse mDNS")
    parser.add_argument("--timeout", type=float, default=2.0, metavar="S", help="per connection attempt")
    parser.add_argument("--json", action="store_true", help="print the checks as a JSON list")


def fetch_status(api: str, api_key: str, timeout_s: float) -> tuple[dict[str, Any], float]:
    """GET /v1/status; the status and the least offset of the API's clock from ours that its Date
    header allows, in s."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    request = urllib.request.Request(api.rstrip("/") + "/v1/status", headers=headers)
    sent = time.time()
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            body, date = response.read(), response.headers.get("Date")
    except urllib.error.HTTPError as error:
        body = error.read()
        try:
            message = str(json.loads(body)["error"]["message"])  # OpenAI's error shape: the API
        except (ValueError, KeyError, TypeError):
            text = body.decode(errors="replace").strip()[:80]
            raise NoAnswer(f"HTTP {error.code} {text!r}: not an EdgeShard API (a peer port?)") from None
        raise NoAnswer(f"HTTP {error.code}: {message}", error.code) from None
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise NoAnswer(f"cannot reach {request.full_url}: {reason}") from None
    received = time.time()
    skew = 0.0
    if date:
        skew = least_offset(email.utils.parsedate_to_datetime(date).timestamp(), sent, received)
    status: dict[str, Any] = json.loads(body)
    return status, skew


def connect_ms(address: str, timeout_s: float) -> Reach:
    """The fastest of a few TCP connects to `address`, or why none succeeded."""
    host, port = host_port(address)
    best: float | None = None
    for _ in range(CONNECT_TRIES):
        started = time.perf_counter()
        try:
            with socket.create_connection((host, port), timeout=timeout_s):
                elapsed = (time.perf_counter() - started) * 1000
        except OSError as error:
            return Reach(error=error.strerror or str(error) or type(error).__name__)
        best = elapsed if best is None else min(best, elapsed)
    return Reach(connect_ms=round(best or 0.0, 2))


def browse_mdns(seconds: float) -> list[Seen]:
    """The peers announced as _edgeshard._tcp.local. while we listen for `seconds`."""
    from edgeshard.discovery.mdns import SERVICE_TYPE, peer_of
    from zeroconf import ServiceBrowser, ServiceStateChange, Zeroconf

    names: set[str] = set()

    def changed(zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange) -> None:
        if state_change is not ServiceStateChange.Removed:
            names.add(name)

    zeroconf = Zeroconf()
    try:
        ServiceBrowser(zeroconf, SERVICE_TYPE, handlers=[changed])
        time.sleep(seconds)
        seen = []
        for name in sorted(names):
            info = zeroconf.get_service_info(SERVICE_TYPE, name, timeout=1000)
            properties = info.properties if info else {}
            peer_id = (properties.get(b"id") or peer_of(name).encode()).decode(errors="replace")
            cluster = name.removesuffix("." + SERVICE_TYPE).rpartition("@")[2]
            cluster = (properties.get(b"cluster") or cluster.encode()).decode(errors="replace")
            address = f"{info.parsed_addresses()[0]}:{info.port}" if info and info.parsed_addresses() else None
            seen.append(Seen(peer_id, cluster, address))
        return seen
    finally:
        zeroconf.close()


def _is_local(host: str) -> bool:
    """Whether `host` names this machine (the memory check means something only then)."""
    import psutil

    if host in ("localhost", "::1") or host.startswith("127."):
        return True
    try:
        wanted = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except OSError:
        return False
    mine = {a.address.split("%")[0] for nics in psutil.net_if_addrs().values() for a in nics}
    return bool(wanted & mine)


def _candidate_apis(api: str, status: dict[str, Any], given: Sequence[str]) -> list[str]:
    """Where other peers' APIs may be: the URLs given, then the local API's port on each peer's host."""
    parts = urlsplit(api)
    guesses = []
    for peer in status.get("peers") or ():
        host, _port = host_port(peer["address"])
        if peer["id"] != status.get("peer"):
            netloc = f"[{host}]:{parts.port}" if ":" in host else f"{host}:{parts.port}"
            guesses.append(urlunsplit((parts.scheme, netloc, "", "", "")))
    return list(dict.fromkeys([*given, *guesses]))


def gather(args: argparse.Namespace) -> Findings:
    """Everything the checks need, from the network and this host."""
    f = Findings(api=args.api, key_given=bool(args.api_key), mdns_seconds=args.mdns_seconds)
    try:
        f.status, own_skew = fetch_status(args.api, args.api_key, args.timeout)
    except NoAnswer as error:
        f.api_error, f.api_status = str(error), error.status
    except ValueError as error:  # an answer that is not JSON
        f.api_error = f"not an EdgeShard API at {args.api} ({error})"
    if args.mdns_seconds > 0:
        try:
            f.mdns = browse_mdns(args.mdns_seconds)
        except Exception as error:  # no multicast route, no interface, a sandbox: say so
            f.mdns_error = f"{type(error).__name__}: {error}"
    else:
        f.mdns_error = "skipped (--mdns-seconds 0)"
    status = f.status
    if status is None:
        return f
    f.skew_s[status["peer"]] = round(own_skew, 1)
    for peer in status.get("peers") or ():
        f.reach[peer["id"]] = connect_ms(peer["address"], args.timeout)
    ids = {peer["id"] for peer in status.get("peers") or ()} - {status["peer"]}
    for url in _candidate_apis(args.api, status, args.peer_api):
        try:
            other, skew = fetch_status(url, args.api_key, args.timeout)
        except (NoAnswer, ValueError):
            continue  # not an API, or not reachable from here: the local view stands in
        if other.get("peer") in ids and other["peer"] not in f.others:
            f.others[other["peer"]] = other
            f.skew_s[other["peer"]] = round(skew, 1)
    f.memory_local = _is_local(urlsplit(args.api).hostname or "")
    if f.memory_local:
        import psutil

        f.memory_available = psutil.virtual_memory().available
    return f


def main(args: argparse.Namespace) -> int:
    """Run `edgeshard doctor`: 0 when every check passes (warnings allowed), 1 when one fails."""
    checks = judge(gather(args))
    print(json.dumps(to_json(checks), indent=2) if args.json else render(checks))
    return exit_code(checks)
