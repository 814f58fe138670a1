"""A LAN on one machine: N hosts as network namespaces on a bridge, links shaped by tc netem,
one edgeshard-peer per host. Run through scripts/testbed (root; it creates the venv first).

  scripts/testbed up 4 --default "delay 1ms rate 1gbit" --link "h1-h4=delay 20ms rate 20mbit" \
      --slowdown h2=3 --max-memory 256MiB
  scripts/testbed status        # every peer's view and plan
  scripts/testbed key           # the API key clients send (OpenAI api_key, or Authorization: Bearer)
  scripts/testbed exec h1 CMD   # run a command inside host h1
  scripts/testbed stop h2       # stop one peer (--kill: SIGKILL); `start h2` starts it again, same state
  scripts/testbed add           # one more host, its peer started like the others (--secret-file/--no-secret)
  scripts/testbed down          # stop the peers, remove namespaces and the bridge

Addresses come from 198.18.0.0/15 (reserved for benchmarking): host hI is 198.18.0.I, the
bridge (the machine itself) 198.18.0.254. Each peer listens on its host's address; its API on
port 7421 of that address, reachable from the machine. Shaping is per directed link: on each
host's interface an HTB class per destination (its rate) with a netem qdisc below it (delay,
loss; `--link` applies to both directions, `--default` to every other pair). A kernel built
without netem gets the rates only, and `up` says so. mDNS runs over the bridge, as on a LAN.
`up` starts the peers one at a time, each once the previous one's API answers (it has measured
its device by then): the hosts share the machine's cores, and separate devices would not.

The cluster is closed, as a real one should be: `up` creates a cluster secret (STATE/secret, once:
kept across `down`), an API key (STATE/api.key, likewise) and a state directory per peer
(STATE/hI: its key, id and incarnation), and starts every peer with `--secret-file`, `--api-key`
and `--state-dir`. A client sends the key as its OpenAI api_key or as `Authorization: Bearer KEY`;
`scripts/testbed key` prints it and `read_api_key()` reads it for Python callers.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shlex
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from dilation import dilate_testbed

STATE = Path(os.environ.get("EDGESHARD_TESTBED_STATE", "/run/edgeshard-testbed"))
BRIDGE = "es-br0"
PREFIX = "198.18.0"
BRIDGE_ADDRESS = f"{PREFIX}.254"
PEER_PORT, API_PORT = 7420, 7421
STOP_WAIT_S = 30.0  # SIGTERM to SIGKILL, as the unit's TimeoutStopSec: a peer drains for up to 20 s


def secret_path(state: Path | None = None) -> Path:
    return (state or STATE) / "secret"


def api_key_path(state: Path | None = None) -> Path:
    return (state or STATE) / "api.key"


def read_api_key(state: Path | None = None) -> str:
    """The key the testbed's APIs require (clients send it as `Authorization: Bearer KEY`)."""
    path = api_key_path(state)
    try:
        return path.read_text().strip()
    except OSError:
        raise SystemExit(f"testbed: no API key at {path} (scripts/testbed up creates it)") from None


def ensure_credentials() -> str:
    """The cluster secret and the API key, each created on first use and kept across `down`, so
    that a client holding the key keeps working; returns the key."""
    from edgeshard.discovery.auth import write_secret

    if not secret_path().exists():
        write_secret(secret_path())
    if not api_key_path().exists():
        # O_EXCL and 0600 from the start: the key is never readable by others, not even briefly.
        descriptor = os.open(api_key_path(), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as file:
            file.write(secrets.token_urlsafe(32) + "\n")
    return read_api_key()


def sh(command: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(shlex.split(command), capture_output=True, text=True)
    if check and result.returncode != 0:
        raise SystemExit(f"testbed: `{command}` failed: {result.stderr.strip()}")
    return result


def host_names(count: int) -> list[str]:
    return [f"h{i}" for i in range(1, count + 1)]


def address(host: str) -> str:
    return f"{PREFIX}.{int(host[1:])}"


def parse_links(specs: list[str]) -> dict[frozenset[str], str]:
    """'h1-h2=delay 20ms rate 20mbit' → {{h1, h2}: 'delay 20ms rate 20mbit'}."""
    links = {}
    for spec in specs:
        pair, _, netem = spec.partition("=")
        a, _, b = pair.partition("-")
        if not (a and b and netem):
            raise SystemExit(f"testbed: --link {spec!r}: expected hA-hB=NETEM OPTIONS")
        links[frozenset((a.strip(), b.strip()))] = netem.strip()
    return links


def split_rate(netem: str) -> tuple[str, str]:
    """'delay 20ms rate 20mbit loss 1%' → ('20mbit', 'delay 20ms loss 1%'): HTB takes the rate."""
    words = netem.split()
    if "rate" in words:
        index = words.index("rate")
        return words[index + 1], " ".join(words[:index] + words[index + 2 :])
    return "100gbit", netem


def netem_available() -> bool:
    """Some kernels (e.g. minimal VM kernels) are built without sch_netem. Probed on a veth pair,
    which the testbed needs anyway (some kernels lack the dummy device)."""
    probe = "es-probe"
    sh(f"ip link add {probe} type veth peer name {probe}-b", check=False)
    ok = sh(f"tc qdisc add dev {probe} root netem delay 1ms", check=False).returncode == 0
    sh(f"ip link del {probe}", check=False)
    return ok


def shape(host: str, hosts: list[str], default: str, links: dict[frozenset[str], str], netem: bool) -> None:
    """HTB on the host's interface: one class per destination host (its rate), netem below it
    (delay, loss) when the kernel has netem."""
    run = f"ip netns exec es-{host} tc"
    sh(f"{run} qdisc add dev eth0 root handle 1: htb default 999")
    sh(f"{run} class add dev eth0 parent 1: classid 1:999 htb rate 100gbit")  # mDNS, anything else
    for other in hosts:
        if other != host:
            shape_link(host, other, links.get(frozenset((host, other)), default), netem)


def link_class(other: str) -> str:
    """The HTB class that shapes traffic to host `other` (`tc class change` it to throttle)."""
    return f"1:{int(other[1:]) + 1}"


def shape_link(host: str, other: str, options: str, netem: bool) -> None:
    """One directed link host → other: its HTB class, netem below it, a filter by destination."""
    if not options:
        return
    run = f"ip netns exec es-{host} tc"
    rate, rest = split_rate(options)
    classid = link_class(other)
    minor = classid.split(":")[1]
    sh(f"{run} class add dev eth0 parent 1: classid {classid} htb rate {rate}")
    if rest and netem:
        sh(f"{run} qdisc add dev eth0 parent {classid} handle {minor}: netem {rest}")
    match = f"u32 match ip dst {address(other)}/32"
    sh(f"{run} filter add dev eth0 parent 1: protocol ip prio 1 {match} flowid {classid}")


def create_host(host: str) -> None:
    """The namespace es-hI with its end of a veth pair on the bridge, at address(host)."""
    ns = f"es-{host}"
    sh(f"ip netns add {ns}")
    sh(f"ip link add es-v{host} type veth peer name eth0 netns {ns}")
    sh(f"ip link set es-v{host} master {BRIDGE} up")
    sh(f"ip netns exec {ns} ip addr add {address(host)}/24 dev eth0")
    sh(f"ip netns exec {ns} ip link set eth0 up")
    sh(f"ip netns exec {ns} ip link set lo up")


def peer_command(host: str, options: dict[str, Any], secret: Path | None) -> list[str]:
    """The edgeshard-peer command line of `host` (inside its namespace), from `up`'s options."""
    command = [
        "ip", "netns", "exec", f"es-{host}", sys.executable, "-m", "edgeshard.peer.daemon",
        "--name", host,
        "--listen", f"{address(host)}:{PEER_PORT}",
        "--api-listen", f"{address(host)}:{API_PORT}",
        "--interface", address(host),
        "--cluster", options["cluster"],
        "--model", options["model"],
        "--context", str(options["context"]),
        "--sessions", str(options["sessions"]),
        "--prefix-cache", str(options.get("prefix_cache", 1024)),
        "--objective", options["objective"],
        "--weights", options.get("weights", "float32"),
        "--strategy", options["strategy"],
        "--emulate-slowdown", options["slowdown"].get(host, f"{options.get('dilation', 1):g}"),
        "--emulate-delay-ms", options.get("delay_ms", {}).get(host, options.get("default_delay_ms", "0")),
        "--state-dir", str(STATE / host),
    ]  # fmt: skip
    if secret is not None:
        command += ["--secret-file", str(secret)]
    if options["max_memory"]:
        command += ["--max-memory", options["max_memory"]]
    if options["reprofile"]:
        command += ["--reprofile"]
    if host == options["source"]:
        command += ["--source"]
    return command


def start_peer(host: str, command: list[str] | None = None) -> int:
    """Start `host`'s peer: with `command`, which is remembered, else with the one it last ran
    (same arguments, same state directory: a restart), and the API key. Returns its pid."""
    saved = STATE / f"{host}.json"
    if command is None:
        command = list(json.loads(saved.read_text())["command"])
    else:
        saved.write_text(json.dumps({"command": command}))  # without the key: it stays in api.key alone
    (STATE / host).mkdir(mode=0o700, exist_ok=True)
    with (STATE / f"{host}.log").open("ab") as log:
        # `ip netns exec` execs the peer in place, so this pid is the peer's, and its group too.
        # The key as one word: it may start with "-".
        argv = [*command, "--api-key=" + read_api_key()]
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    (STATE / f"{host}.pid").write_text(str(process.pid))
    return process.pid


def peer_pid(host: str) -> int | None:
    pid_file = STATE / f"{host}.pid"
    return int(pid_file.read_text()) if pid_file.exists() else None


def alive(pid: int) -> bool:
    """Whether process `pid` runs. A dead child of ours is reaped here (a zombie still answers
    kill(pid, 0)), and a zombie of another parent counts as dead too."""
    with contextlib.suppress(ChildProcessError):
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] not in {"Z", "X"}


def stop_peer(host: str, kill: bool = False, wait_s: float = STOP_WAIT_S) -> None:
    """SIGTERM `host`'s peer (it leaves) and wait for it to exit, SIGKILL after `wait_s`;
    `kill`: SIGKILL at once (a crash)."""
    pid = peer_pid(host)
    if pid is None or not alive(pid):
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL if kill else signal.SIGTERM)
    deadline = time.monotonic() + wait_s
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    while alive(pid):
        time.sleep(0.05)


def read_options() -> dict[str, Any]:
    if not (STATE / "up.json").exists():
        raise SystemExit("testbed: not up (scripts/testbed up first)")
    options: dict[str, Any] = json.loads((STATE / "up.json").read_text())
    return options


def read_hosts() -> list[str]:
    hosts: list[str] = json.loads((STATE / "hosts.json").read_text())
    return hosts


def up(args: argparse.Namespace) -> None:
    if (STATE / "hosts.json").exists():
        raise SystemExit("testbed: already up (scripts/testbed down first)")
    hosts = host_names(args.hosts)
    netem = netem_available()
    slowdown = {host: float(factor) for host, _, factor in (item.partition("=") for item in args.slowdown)}
    bed = dilate_testbed(hosts, args.default, parse_links(args.link), slowdown, args.dilate, netem)
    links = bed.links
    if not netem:
        print("testbed: this kernel has no netem: link rates are shaped (HTB), delay is emulated in the peers")
    for warning in bed.warnings:
        print(f"testbed: {warning}")
    if args.dilate != 1:
        d = f"{args.dilate:g}"
        print(f"testbed: dilated {d}x: compute x{d}, link rates /{d}, delays x{d} (figures divide back by {d})")
    STATE.mkdir(parents=True, exist_ok=True)
    key = ensure_credentials()
    options = {
        **{name: getattr(args, name) for name in ("cluster", "model", "context", "sessions", "objective")},
        "prefix_cache": args.prefix_cache,
        **{name: getattr(args, name) for name in ("strategy", "max_memory", "reprofile", "source")},
        "default": bed.default,
        "slowdown": {host: f"{factor:g}" for host, factor in bed.slowdown.items()},
        "delay_ms": {host: f"{delay:g}" for host, delay in bed.delay_ms.items()},
        "dilation": args.dilate,  # also a later host's slowdown (`add`): as an unlisted host now
        "default_delay_ms": f"{max(bed.delay_ms.values(), default=0.0):g}",
        "links": {"-".join(sorted(pair)): netem_options for pair, netem_options in links.items()},
        "netem": netem,
    }
    (STATE / "up.json").write_text(json.dumps(options))
    (STATE / "hosts.json").write_text(json.dumps(hosts))
    sh(f"ip link add {BRIDGE} type bridge")
    sh(f"ip addr add {BRIDGE_ADDRESS}/24 dev {BRIDGE}")
    sh(f"ip link set {BRIDGE} up")
    for host in hosts:
        create_host(host)
        shape(host, hosts, bed.default, links, netem)
    for host in hosts:
        start_peer(host, peer_command(host, options, secret_path()))
        # One at a time: the hosts share this machine's cores, so a peer profiling while another
        # does measures the contention, not its device (a host slowed 3x once measured 1.6x).
        wait_answering(host, key)
    print(f"testbed up: {len(hosts)} hosts; APIs at http://{PREFIX}.N:{API_PORT}/v1; logs in {STATE}")
    print(f"API key in {api_key_path()} (`scripts/testbed key`); clients send it, e.g.")
    print(f'  curl -H "Authorization: Bearer $(scripts/testbed key)" http://{address(hosts[0])}:{API_PORT}/v1/models')
    print(f'  OpenAI(base_url="http://{address(hosts[0])}:{API_PORT}/v1", api_key=KEY)')
    if args.wait:
        wait_ready(hosts, args.wait, key)


def add_host(secret: Path | None) -> str:
    """One more host on the bridge, shaped like the others (`--default` links), and its peer:
    with `secret` (the testbed's, another one: a stranger, or None: no secret). Returns its name."""
    options = read_options()
    hosts = read_hosts()
    free = [h for h in host_names(16) if h not in hosts]
    if not free:
        raise SystemExit("testbed: 16 hosts at most")
    host = free[0]
    links = {frozenset(pair.split("-")): value for pair, value in options["links"].items()}
    hosts.append(host)
    (STATE / "hosts.json").write_text(json.dumps(hosts))  # first: `down` removes it whatever happens next
    create_host(host)
    shape(host, hosts, options["default"], links, options["netem"])
    for other in hosts[:-1]:  # the others' links to it
        shape_link(other, host, links.get(frozenset((host, other)), options["default"]), options["netem"])
    start_peer(host, peer_command(host, options, secret))
    return host


def add(args: argparse.Namespace) -> None:
    secret = None if args.no_secret else Path(args.secret_file) if args.secret_file else secret_path()
    print(add_host(secret))


def get_json(url: str, key: str | None, timeout_s: float = 3.0) -> Any:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout_s) as response:
        return json.load(response)


def statuses(hosts: list[str], key: str | None = None) -> dict[str, dict[str, Any] | None]:
    key = key if key is not None else read_api_key() if api_key_path().exists() else None
    result: dict[str, dict[str, Any] | None] = {}
    for host in hosts:
        try:
            result[host] = get_json(f"http://{address(host)}:{API_PORT}/v1/status", key)
        except (OSError, ValueError):
            result[host] = None
    return result


def check_alive(hosts: list[str]) -> None:
    if dead := [h for h in hosts if (pid := peer_pid(h)) is not None and not alive(pid)]:
        tail = (STATE / f"{dead[0]}.log").read_text(errors="replace").strip().splitlines()[-3:]
        raise SystemExit(f"testbed: the peer of {', '.join(dead)} exited: " + " / ".join(tail))


def wait_answering(host: str, key: str | None, timeout_s: float = 300) -> None:
    """Until the host's API answers: its peer has measured the device (that comes first)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        check_alive([host])
        if statuses([host], key)[host] is not None:
            return
        time.sleep(0.5)
    raise SystemExit(f"testbed: the peer of {host} did not answer within {timeout_s:.0f} s (logs in {STATE})")


def wait_ready(hosts: list[str], timeout_s: float, key: str | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        check_alive(hosts)
        seen = statuses(hosts, key)
        layouts = {json.dumps((s.get("plan") or {}).get("layout_id")) for s in seen.values() if s}
        if all(s and s["ready"] for s in seen.values()) and len(layouts) == 1:
            print("testbed ready: every peer serves one plan")
            return
        time.sleep(1)
    raise SystemExit(f"testbed: not ready within {timeout_s:.0f} s (logs in {STATE})")


def status(_args: argparse.Namespace) -> None:
    for host, state in statuses(read_hosts()).items():
        if state is None:
            print(f"{host}: no answer")
            continue
        plan = state.get("plan") or {}
        stages = " → ".join(f"{s['device']}[{s['start']}:{s['end']})" for s in plan.get("stages", []))
        print(f"{host}: ready={state['ready']} plan={plan.get('plan_id')} {stages}")


def key(_args: argparse.Namespace) -> None:
    print(read_api_key())


def stop(args: argparse.Namespace) -> None:
    stop_peer(args.host, kill=args.kill)


def start(args: argparse.Namespace) -> None:
    pid = peer_pid(args.host)
    if pid is not None and alive(pid):
        raise SystemExit(f"testbed: {args.host}'s peer runs (pid {pid}): scripts/testbed stop {args.host} first")
    if not (STATE / f"{args.host}.json").exists():
        raise SystemExit(f"testbed: {args.host} never ran a peer")
    print(f"{args.host}: pid {start_peer(args.host)}")


def down(_args: argparse.Namespace) -> None:
    hosts = read_hosts() if (STATE / "hosts.json").exists() else host_names(16)
    for host in hosts:
        pid = peer_pid(host)
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGCONT)  # a stopped peer cannot act on SIGTERM
                os.killpg(pid, signal.SIGTERM)
    time.sleep(1.0)
    for host in hosts:
        pid = peer_pid(host)
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            (STATE / f"{host}.pid").unlink()
        sh(f"ip netns del es-{host}", check=False)
        sh(f"ip link del es-v{host}", check=False)
    sh(f"ip link del {BRIDGE}", check=False)
    (STATE / "hosts.json").unlink(missing_ok=True)
    (STATE / "up.json").unlink(missing_ok=True)
    print("testbed down")


def execute(args: argparse.Namespace) -> None:
    os.execvp("ip", ["ip", "netns", "exec", f"es-{args.host}", *args.command])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scripts/testbed", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="action", required=True)
    bring_up = commands.add_parser("up", help="create the hosts and start a peer in each")
    bring_up.add_argument("hosts", type=int, help="how many hosts (1-16)")
    bring_up.add_argument("--default", default="delay 1ms rate 1gbit", help="netem options for every link")
    bring_up.add_argument("--link", action="append", default=[], metavar="hA-hB=NETEM", help="one link, both ways")
    bring_up.add_argument("--slowdown", action="append", default=[], metavar="hI=F", help="host hI computes F× slower")
    bring_up.add_argument(
        "--dilate",
        type=float,
        default=1.0,
        metavar="D",
        help="time dilation: every host D× slower than its device (compute ×D, rates ÷D, delays ×D; default 1)",
    )
    bring_up.add_argument("--max-memory", help="per peer, e.g. 256MiB")
    bring_up.add_argument("--model", default="default")
    bring_up.add_argument("--context", type=int, default=512)
    bring_up.add_argument("--objective", choices=["latency", "throughput"], default="latency")
    bring_up.add_argument("--sessions", type=int, default=4, help="concurrent sessions per stage (default 4)")
    bring_up.add_argument(
        "--prefix-cache", type=int, default=1024, metavar="TOKENS", help="each peer's prefix cache (default 1024)"
    )
    bring_up.add_argument("--weights", default="float32", help="weight form of every peer (the paper's: float32)")
    bring_up.add_argument("--strategy", default="edgeshard", help="plan with a baseline instead (benchmarks)")
    bring_up.add_argument("--source", metavar="hI", help="the host where prompts come from: stage 0 runs there")
    bring_up.add_argument("--cluster", default="testbed")
    bring_up.add_argument("--reprofile", action="store_true", help="measure every host afresh (no cached profile)")
    bring_up.add_argument("--wait", type=float, default=0, metavar="S", help="wait up to S seconds for a ready plan")
    commands.add_parser("status", help="each peer's readiness and plan")
    commands.add_parser("key", help="print the API key clients must send")
    joining = commands.add_parser("add", help="one more host, its peer started like the others")
    secret = joining.add_mutually_exclusive_group()
    secret.add_argument("--secret-file", metavar="FILE", help="another cluster secret (default: the testbed's)")
    secret.add_argument("--no-secret", action="store_true", help="start its peer without a secret")
    halt = commands.add_parser("stop", help="stop one host's peer (SIGTERM; it leaves)")
    halt.add_argument("host")
    halt.add_argument("--kill", action="store_true", help="SIGKILL instead (a crash)")
    restart = commands.add_parser("start", help="start a stopped host's peer again (same arguments and state)")
    restart.add_argument("host")
    commands.add_parser("down", help="stop everything and remove the hosts")
    run = commands.add_parser("exec", help="run a command inside a host")
    run.add_argument("host")
    run.add_argument("command", nargs=argparse.REMAINDER)
    return parser


def main() -> None:
    args = build_parser().parse_args()
    if os.geteuid() != 0 and args.action != "key":
        raise SystemExit("testbed: needs root (network namespaces, tc)")
    if args.action == "up" and not 1 <= args.hosts <= 16:
        raise SystemExit("testbed: 1 to 16 hosts")
    actions = {"up": up, "status": status, "key": key, "add": add, "stop": stop, "start": start, "down": down}
    {**actions, "exec": execute}[args.action](args)


if __name__ == "__main__":
    main()
