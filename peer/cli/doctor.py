"""`edgeshard doctor`: why a cluster does not form, checked from this host.

It reads the local peer's status (`--api`), browses mDNS for a moment, connects to every peer's
port, reads the other peers' statuses where their APIs answer (`--peer-api`, or the local API's
port on each peer's host; the API key goes to those guessed APIs only in a closed cluster),
compares clocks by the HTTP `Date` header (1 s resolution: the status carries no wall clock) and
this host's free memory; `checkup.judge` concludes. HTTP goes through `api.client` (standard
library); zeroconf and psutil load only inside the command.
"""

from __future__ import annotations

import argparse
import email.utils
import json
import os
import socket
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from ..api.client import DEFAULT_API, ApiError, get_json
from ..daemon.config import is_loopback
from .checkup import Findings, Reach, Seen, exit_code, host_port, judge, least_offset, render, to_json

CONNECT_TRIES = 3
DEFAULT_API_PORT = urlsplit(DEFAULT_API).port or 7421


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


def read_status(api: str, api_key: str, timeout_s: float) -> tuple[dict[str, Any], float | None]:
    """GET /v1/status; the status and the least offset of the API's clock from ours that its Date
    header allows, in s (None without a readable Date). ApiError when no status comes."""
    sent = time.time()
    try:
        status, headers = get_json(api, "/v1/status", timeout_s, api_key)
    except ApiError as error:
        if error.status in (404, 405):  # an HTTP server without our API: a peer port?
            raise ApiError(f"{error}: not an EdgeShard API (a peer port?)", status=error.status) from None
        raise
    received = time.time()
    if not isinstance(status, dict) or "peer" not in status:
        raise ApiError(f"{api} answered JSON that is not an EdgeShard status: not an EdgeShard API?")
    skew = None
    date = headers.get("Date")
    if date:
        try:
            skew = least_offset(email.utils.parsedate_to_datetime(date).timestamp(), sent, received)
        except (TypeError, ValueError):  # a Date header that is not one
            skew = None
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

    if is_loopback(host):
        return True
    try:
        wanted = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except OSError:
        return False
    mine = {a.address.split("%")[0] for nics in psutil.net_if_addrs().values() for a in nics}
    return bool(wanted & mine)


def _candidate_apis(api: str, status: dict[str, Any], given: Sequence[str]) -> list[tuple[str, bool]]:
    """Where other peers' APIs may be, each with whether it was guessed: the URLs given, then the
    local API's port (the API's default, 7421, when `api` names none) on each peer's host."""
    parts = urlsplit(api)
    scheme = parts.scheme or "http"
    try:
        port = parts.port or (443 if scheme == "https" else DEFAULT_API_PORT)
    except ValueError:  # "host:abc": no port to guess with
        port = DEFAULT_API_PORT
    guesses = []
    for peer in status.get("peers") or ():
        host, _port = host_port(peer["address"])
        if peer["id"] != status.get("peer") and host:
            netloc = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            guesses.append(urlunsplit((scheme, netloc, "", "", "")))
    found = dict.fromkeys(given, False)
    for url in guesses:
        found.setdefault(url, True)
    return list(found.items())


def key_for(guessed: bool, status: dict[str, Any], api_key: str) -> str:
    """The API key to send to another peer's API: to the URLs given with --peer-api always (the
    user named them); to a guessed one (an address from the peer's view) only when the local
    status says the cluster is closed (a secret admits its peers): in an open cluster any host
    can join the view, and a stranger's advertised address would receive the key."""
    if not guessed:
        return api_key
    mode = (status.get("security") or {}).get("mode")
    return api_key if mode is not None and mode != "open" else ""


def gather(args: argparse.Namespace) -> Findings:
    """Everything the checks need, from the network and this host."""
    f = Findings(api=args.api, key_given=bool(args.api_key), mdns_seconds=args.mdns_seconds)
    own_skew = None
    try:
        f.status, own_skew = read_status(args.api, args.api_key, args.timeout)
    except ApiError as error:
        f.api_error, f.api_status = str(error), error.status
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
    if own_skew is not None:
        f.skew_s[status["peer"]] = round(own_skew, 1)
    for peer in status.get("peers") or ():
        f.reach[peer["id"]] = connect_ms(peer["address"], args.timeout)
    ids = {peer["id"] for peer in status.get("peers") or ()} - {status["peer"]}
    for url, guessed in _candidate_apis(args.api, status, args.peer_api):
        try:
            other, skew = read_status(url, key_for(guessed, status, args.api_key), args.timeout)
        except ApiError:
            continue  # not an API, or not reachable from here: the local view stands in
        if other.get("peer") in ids and other["peer"] not in f.others:
            f.others[other["peer"]] = other
            if skew is not None:
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
