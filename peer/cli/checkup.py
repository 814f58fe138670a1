"""What `edgeshard doctor` concludes, apart from how it looks (pure: no I/O, standard library).

`doctor.py` gathers `Findings` (the local peer's status, what mDNS shows, TCP connects, other
peers' statuses, clocks, this host's memory); `judge` turns them into `Check`s, each ✓ (ok),
! (warn: worth a look, not why a cluster fails) or ✗ (fail), with a hint when it is not ok;
`render` prints them for people, `to_json` for scripts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit

from ..api.client import describe_stages
from ..daemon.config import is_loopback

Level = Literal["ok", "warn", "fail"]
MARKS: dict[Level, str] = {"ok": "✓", "warn": "!", "fail": "✗"}

SIGNATURE_WINDOW_S = 60.0  # discovery.auth.WINDOW_S: a signed request older or newer is refused
SKEW_WARN_S = 2.0  # the Date header has 1 s resolution: below this, nothing can be told
SLOW_LINK_MBPS = 20.0
FAR_RTT_MS = 50.0
MIN_FREE_BYTES = 64 * 2**20
LOW_FREE_BYTES = 256 * 2**20
MiB, GiB = 2**20, 2**30


@dataclass(frozen=True)
class Check:
    """One conclusion: its name, level, one-line summary, detail lines, and a hint when not ok."""

    name: str
    level: Level
    summary: str
    details: tuple[str, ...] = ()
    hint: str | None = None


@dataclass(frozen=True)
class Reach:
    """A TCP connect from here: the fastest of a few, in ms, or why it failed."""

    connect_ms: float | None = None
    error: str | None = None


@dataclass(frozen=True)
class Seen:
    """A peer announced over mDNS (instance ID@CLUSTER)."""

    peer_id: str
    cluster: str
    address: str | None = None


@dataclass
class Findings:
    """Everything doctor gathered; every part may be missing (None) when it could not be had."""

    api: str
    status: dict[str, Any] | None = None
    api_error: str | None = None
    api_status: int | None = None  # HTTP status of a refusal (401: the key)
    key_given: bool = False
    mdns: list[Seen] | None = None
    mdns_error: str | None = None
    mdns_seconds: float = 0.0
    reach: dict[str, Reach] = field(default_factory=dict)  # by peer id
    others: dict[str, dict[str, Any]] = field(default_factory=dict)  # other peers' statuses, by peer id
    skew_s: dict[str, float] = field(default_factory=dict)  # peer id → its API's clock minus ours
    memory_available: int | None = None
    memory_local: bool = True


def host_port(address: str) -> tuple[str, int]:
    """("host", port) of "http://host:port" or "host:port"."""
    parts = urlsplit(address if "://" in address else "http://" + address)
    return parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)


def least_offset(stamped: float, sent: float, received: float) -> float:
    """The smallest offset of a remote clock from ours that an HTTP Date header allows: the remote
    read `stamped` (truncated to the second) between our `sent` and `received`, so its offset lies
    in [stamped - received, stamped + 1 - sent]; a slow answer widens that, never fakes a skew."""
    low, high = stamped - received, stamped + 1 - sent
    return low if low > 0 else high if high < 0 else 0.0


def _name(peer: Mapping[str, Any]) -> str:
    return str(peer.get("name") or peer["id"])


def _own(status: Mapping[str, Any]) -> dict[str, Any]:
    """The local peer's entry in its status's peers."""
    found: dict[str, Any] = next((p for p in status.get("peers") or () if p["id"] == status.get("peer")), {})
    return found


def _peer_names(status: Mapping[str, Any]) -> dict[str, str]:
    return {peer["id"]: _name(peer) for peer in status.get("peers") or ()}


def check_api(f: Findings) -> Check:
    """Does the local peer's API answer, and does it take the key?"""
    if f.status is None:
        if f.api_status == 401:
            hint = (
                "pass the peer's api_key with --api-key or $EDGESHARD_API_KEY"
                if not f.key_given
                else "the key given is not the peer's api_key (see its config file or EDGESHARD_API_KEY)"
            )
            return Check("api", "fail", f"{f.api} refuses the API key: {f.api_error}", hint=hint)
        return Check(
            "api",
            "fail",
            f"no answer from the peer's API: {f.api_error}",
            hint="is edgeshard-peer running here (systemctl status edgeshard-peer)? Its API listens where "
            "--api-listen says (default 127.0.0.1:7421); pass that address with --api",
        )
    status = f.status
    mode = (status.get("security") or {}).get("mode")
    guard = "open cluster (no secret)" if mode == "open" else "cluster secret"
    key = ", key accepted" if f.key_given else ""
    return Check(
        "api",
        "ok",
        f"{f.api} answers: peer {status.get('name')} ({status.get('peer')}) of cluster "
        f"{status.get('cluster')!r}, {guard}{key}",
    )


def check_mdns(f: Findings) -> Check:
    """Is mDNS seen on this host's interfaces, and does it agree with the peer's view?"""
    if f.mdns is None:
        return Check(
            "mdns",
            "warn",
            f"cannot browse mDNS here: {f.mdns_error}",
            hint="without mDNS, peers find each other only through --bootstrap addresses",
        )
    cluster = (f.status or {}).get("cluster")
    view = _peer_names(f.status or {})
    ours = [s for s in f.mdns if cluster is None or s.cluster == cluster]  # "home2" is not "home"
    strangers = sorted({s.cluster for s in f.mdns if s not in ours})
    details = [f"{view.get(s.peer_id, s.peer_id)} ({s.peer_id}) at {s.address or '?'}" for s in ours]
    if strangers:
        details.append(f"also seen: peers of other clusters ({', '.join(strangers)})")
    if not ours:
        return Check(
            "mdns",
            "warn",
            f"no mDNS peers seen on this interface in {f.mdns_seconds:.0f} s"
            + (" (only other clusters')" if strangers else ""),
            tuple(details),
            hint="fine for peers started with --no-mdns and --bootstrap; otherwise multicast (UDP 5353) is "
            "blocked here (a firewall, Wi-Fi client isolation, another subnet): give --bootstrap host:port",
        )
    unseen = [name for peer_id, name in view.items() if peer_id not in {s.peer_id for s in ours}]
    missing = [s for s in ours if view and s.peer_id not in view]
    if missing:
        names = ", ".join(s.peer_id for s in missing)
        return Check(
            "mdns",
            "warn",
            f"announced over mDNS but not in the peer's view: {names}",
            tuple(details),
            hint="the peer cannot reach them (their port, or the cluster secret differs: see its log)",
        )
    tail = f"; not announced: {', '.join(unseen)} (--no-mdns?)" if unseen else ""
    return Check("mdns", "ok", f"{len(ours)} peers of this cluster announce themselves{tail}", tuple(details))


def check_ports(f: Findings) -> Check:
    """Does every peer of the view accept a TCP connection on its peer port from here?"""
    status = f.status or {}
    peers = status.get("peers") or []
    details: list[str] = []
    failed: list[str] = []
    warned: list[str] = []
    loopback = {peer["id"] for peer in peers if is_loopback(host_port(peer["address"])[0])}
    for peer in peers:
        reach = f.reach.get(peer["id"], Reach(error="not tried"))
        health = peer.get("health", "alive")
        shown = f"{_name(peer):<12} {peer['address']:<28} {health:<8}"
        if reach.connect_ms is not None:
            details.append(f"{shown} connect {reach.connect_ms:.1f} ms")
            if health != "alive":
                warned.append(f"{_name(peer)} answers here but is {health} in the view")
        else:
            details.append(f"{shown} {reach.error}")
            (warned if health == "dead" else failed).append(f"{_name(peer)} ({reach.error})")
    if loopback and len(loopback) < len(peers):
        failed.append("some peers announce a loopback address, which only their own host can reach")
    if failed:
        return Check(
            "ports",
            "fail",
            "peer ports not reachable from here: " + "; ".join(failed),
            tuple(details),
            hint="open the peer port (--listen, TCP) in the firewall of each host, and listen on the LAN "
            "address (--listen 0.0.0.0:7420), not 127.0.0.1",
        )
    if warned:
        return Check("ports", "warn", "; ".join(warned), tuple(details), hint="a peer that left is forgotten in 10 s")
    return Check("ports", "ok", f"all {len(peers)} peers' ports answer from here", tuple(details))


def check_links(f: Findings) -> Check:
    """Bandwidth and round trip to each peer: the peer's measured links, and a connect from here."""
    status = f.status or {}
    own = _own(status)
    measured = {link["peer"]: link for link in own.get("links") or ()}
    details, slow, unmeasured = [], [], []
    for peer in status.get("peers") or ():
        if peer["id"] == status.get("peer"):
            continue
        reach = f.reach.get(peer["id"], Reach())
        here = f"connect {reach.connect_ms:.1f} ms from here" if reach.connect_ms is not None else "no connect"
        link = measured.get(peer["id"])
        if link is None:
            unmeasured.append(_name(peer))
            details.append(f"{_name(peer):<12} not measured yet; {here}")
            continue
        details.append(f"{_name(peer):<12} {link['mbps']:g} Mbps, {link['rtt_ms']:g} ms round trip measured; {here}")
        if link["mbps"] < SLOW_LINK_MBPS or link["rtt_ms"] > FAR_RTT_MS:
            slow.append(_name(peer))
    if not details:
        return Check("links", "warn", "no other peer in the view", hint="start more peers, or give --bootstrap")
    if slow or unmeasured:
        parts = ([f"slow or far: {', '.join(slow)}"] if slow else []) + (
            [f"not measured yet: {', '.join(unmeasured)}"] if unmeasured else []
        )
        hint = "links are probed at join and every 60 s; Wi-Fi and powerline links slow every token"
        return Check("links", "warn", "; ".join(parts), tuple(details), hint=hint)
    return Check("links", "ok", f"links to {len(details)} peers measured", tuple(details))


def check_agreement(f: Findings) -> Check:
    """Do the peers run the same model file, settings and cluster, and agree on the plan?"""
    status = f.status or {}
    names = _peer_names(status)
    fingerprint = (status.get("model") or {}).get("fingerprint", "")
    problems = [f"{_name(p)} left out: {p['excluded']}" for p in status.get("peers") or () if p.get("excluded")]
    layouts = {status.get("peer"): (status.get("plan") or {}).get("layout_id")}
    for peer_id, other in f.others.items():
        name = names.get(peer_id, peer_id)
        theirs = (other.get("model") or {}).get("fingerprint", "")
        if theirs != fingerprint:
            problems.append(f"{name} runs model file {theirs[:12]}, this peer {fingerprint[:12]}")
        if other.get("cluster") != status.get("cluster"):
            problems.append(f"{name} is in cluster {other.get('cluster')!r}, this peer in {status.get('cluster')!r}")
        layouts[peer_id] = (other.get("plan") or {}).get("layout_id")
    source = f"{len(f.others) + 1} peers' statuses" if f.others else "this peer's view: no other peer's API answered"
    details = (f"model {status.get('model', {}).get('spec')} ({fingerprint[:12]}), weights {status.get('weights')}",)
    if problems:
        return Check(
            "agreement",
            "fail",
            "; ".join(problems),
            details,
            hint="start every peer with the same model file and the same --context, --sessions, "
            "--objective (and --tls on all or none), from the same EdgeShard version",
        )
    if len({layout for layout in layouts.values()}) > 1:
        shown = ", ".join(f"{names.get(str(k), k)}: {v}" for k, v in layouts.items())
        return Check(
            "agreement", "warn", f"the peers hold different plans ({shown})", details, hint="converging? ask again"
        )
    return Check("agreement", "ok", f"model and planning settings agree ({source})", details)


def check_memory(f: Findings) -> Check:
    """This host's free memory beside what the peer's stage holds."""
    status = f.status or {}
    shard = status.get("shard") or {}
    own = _own(status)
    uses = (
        f"the peer holds {shard.get('rss_bytes', 0) / GiB:.2f} GiB (weights {shard.get('weight_bytes', 0) / GiB:.2f}"
        f" GiB) and offers {own.get('memory_bytes', 0) / GiB:.2f} GiB to plans"
    )
    if status.get("phase") == "failed":
        summary = "the peer could not load its units and withdrew its memory"
        return Check("memory", "fail", summary, (uses,), hint="see the peer's log; --max-memory caps what it offers")
    if not f.memory_local or f.memory_available is None:
        return Check("memory", "warn", "not checked: the peer runs on another host", (uses,))
    free = f"this host has {f.memory_available / GiB:.2f} GiB available"
    hint = "stop other programs or lower --max-memory (the plan then gives this peer fewer layers)"
    if f.memory_available < MIN_FREE_BYTES:
        return Check("memory", "fail", free + ": the kernel may kill the peer", (uses,), hint=hint)
    if f.memory_available < max(LOW_FREE_BYTES, shard.get("rss_bytes", 0) // 10):
        return Check("memory", "warn", free + ": little headroom", (uses,), hint=hint)
    return Check("memory", "ok", free, (uses,))


def check_clock(f: Findings) -> Check:
    """Clock skew to each peer whose API answered (its HTTP Date header: 1 s resolution)."""
    names = _peer_names(f.status or {})
    details = tuple(f"{names.get(k, k):<12} {v:+.1f} s" for k, v in f.skew_s.items())
    note = "from HTTP Date headers, 1 s resolution"
    own = (f.status or {}).get("peer")
    if not any(peer_id != own for peer_id in f.skew_s):
        hint = "give other peers' APIs with --peer-api URL (an API listening on 127.0.0.1 answers its host only)"
        return Check("clock", "warn", "no other peer's clock read: their APIs do not answer from here", details, hint)
    worst = max(abs(v) for v in f.skew_s.values())
    hint = "run NTP (systemd-timesyncd, chrony) on every device; boards without a real-time clock need it"
    if worst > SIGNATURE_WINDOW_S / 2:
        summary = f"clocks differ by at least {worst:.0f} s ({note}): signed requests are refused beyond 60 s"
        return Check("clock", "fail", summary, details, hint=hint)
    if worst > SKEW_WARN_S:
        return Check("clock", "warn", f"clocks differ by at least {worst:.0f} s ({note})", details, hint=hint)
    return Check(
        "clock", "ok", f"{len(f.skew_s)} peers' clocks within {SKEW_WARN_S:.0f} s of this host's ({note})", details
    )


PHASE_HINTS = {
    "no-plan": "the peer has not planned yet: wait a few seconds after the peers join",
    "loading": "the peer is loading its layers: wait",
    "infeasible": "the live peers cannot hold the model: add a device, or raise --max-memory",
    "failed": "the peer could not load its layers: see its log",
}


def check_plan(f: Findings) -> Check:
    """The plan and readiness."""
    status = f.status or {}
    plan = status.get("plan")
    details = []
    if plan:
        details.append(f"layout {plan.get('layout_id')} ({plan.get('objective')}): {describe_stages(plan)}")
    phase = status.get("phase")
    if status.get("ready"):
        return Check("plan", "ok", f"phase {phase}, ready", tuple(details))
    hint = PHASE_HINTS.get(str(phase), "see the peer's log")
    return Check("plan", "fail", f"phase {phase}, not ready: {status.get('reason')}", tuple(details), hint=hint)


def judge(f: Findings) -> list[Check]:
    """Every check, in the order a person would look."""
    api = check_api(f)
    if f.status is None:
        return [api, check_mdns(f)]
    checks = (check_mdns, check_ports, check_links, check_agreement, check_memory, check_clock, check_plan)
    return [api, *(check(f) for check in checks)]


def exit_code(checks: Sequence[Check]) -> int:
    """0 when nothing failed, 1 otherwise."""
    return 1 if any(check.level == "fail" for check in checks) else 0


def render(checks: Sequence[Check]) -> str:
    """The checks for people: a mark, the name, the summary; details and hint indented."""
    lines = []
    for check in checks:
        lines.append(f"{MARKS[check.level]} {check.name:<10} {check.summary}")
        lines.extend(f"    {detail}" for detail in check.details)
        if check.hint and check.level != "ok":
            lines.append(f"    hint: {check.hint}")
    return "\n".join(lines)


def to_json(checks: Sequence[Check]) -> list[dict[str, Any]]:
    """The checks for scripts."""
    return [asdict(check) | {"details": list(check.details)} for check in checks]
