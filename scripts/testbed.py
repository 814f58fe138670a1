"""A LAN on one machine: N hosts as network namespaces on a bridge, links shaped by tc netem,
one edgeshard-peer per host. Run through scripts/testbed (root; it creates the venv first).

  scripts/testbed up 4 --default "delay 1ms rate 1gbit" --link "h1-h4=delay 20ms rate 20mbit" \
      --slowdown h2=3 --max-memory 256MiB
  scripts/testbed status        # every peer's view and plan
  scripts/testbed exec h1 CMD   # run a command inside host h1
  scripts/testbed down          # stop the peers, remove namespaces and the bridge

Addresses come from 198.18.0.0/15 (reserved for benchmarking): host hI is 198.18.0.I, the
bridge (the machine itself) 198.18.0.254. Each peer listens on its host's address; its API on
port 7421 of that address, reachable from the machine. Shaping is per directed link: on each
host's interface an HTB class per destination (its rate) with a netem qdisc below it (delay,
loss; `--link` applies to both directions, `--default` to every other pair). A kernel built
without netem gets the rates only, and `up` says so. mDNS runs over the bridge, as on a LAN.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

STATE = Path(os.environ.get("EDGESHARD_TESTBED_STATE", "/run/edgeshard-testbed"))
BRIDGE = "es-br0"
PREFIX = "198.18.0"
BRIDGE_ADDRESS = f"{PREFIX}.254"
PEER_PORT, API_PORT = 7420, 7421


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
    """Some kernels (e.g. minimal VM kernels) are built without sch_netem."""
    probe = "es-probe"
    sh(f"ip link add {probe} type dummy", check=False)
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
        if other == host:
            continue
        options = links.get(frozenset((host, other)), default)
        if not options:
            continue
        rate, rest = split_rate(options)
        minor = int(other[1:]) + 1
        sh(f"{run} class add dev eth0 parent 1: classid 1:{minor} htb rate {rate}")
        if rest and netem:
            sh(f"{run} qdisc add dev eth0 parent 1:{minor} handle {minor}: netem {rest}")
        match = f"u32 match ip dst {address(other)}/32"
        sh(f"{run} filter add dev eth0 parent 1: protocol ip prio 1 {match} flowid 1:{minor}")


def up(args: argparse.Namespace) -> None:
    if (STATE / "hosts.json").exists():
        raise SystemExit("testbed: already up (scripts/testbed down first)")
    hosts = host_names(args.hosts)
    links = parse_links(args.link)
    slowdown = dict(item.split("=", 1) for item in args.slowdown)
    netem = netem_available()
    if not netem:
        print("testbed: this kernel has no netem: link rates are shaped (HTB), delay and loss are not")
    STATE.mkdir(parents=True, exist_ok=True)
    (STATE / "hosts.json").write_text(json.dumps(hosts))
    sh(f"ip link add {BRIDGE} type bridge")
    sh(f"ip addr add {BRIDGE_ADDRESS}/24 dev {BRIDGE}")
    sh(f"ip link set {BRIDGE} up")
    for host in hosts:
        ns = f"es-{host}"
        sh(f"ip netns add {ns}")
        sh(f"ip link add es-v{host} type veth peer name eth0 netns {ns}")
        sh(f"ip link set es-v{host} master {BRIDGE} up")
        sh(f"ip netns exec {ns} ip addr add {address(host)}/24 dev eth0")
        sh(f"ip netns exec {ns} ip link set eth0 up")
        sh(f"ip netns exec {ns} ip link set lo up")
        shape(host, hosts, args.default, links, netem)
    python = sys.executable
    for host in hosts:
        command = [
            "ip", "netns", "exec", f"es-{host}", python, "-m", "edgeshard.peer.daemon",
            "--name", host,
            "--listen", f"{address(host)}:{PEER_PORT}",
            "--api-listen", f"{address(host)}:{API_PORT}",
            "--interface", address(host),
            "--cluster", args.cluster,
            "--model", args.model,
            "--context", str(args.context),
            "--sessions", str(args.sessions),
            "--objective", args.objective,
            "--strategy", args.strategy,
            "--emulate-slowdown", slowdown.get(host, "1"),
        ]  # fmt: skip
        if args.max_memory:
            command += ["--max-memory", args.max_memory]
        if args.reprofile:
            command += ["--reprofile"]
        if host == args.source:
            command += ["--source"]
        with (STATE / f"{host}.log").open("ab") as log:
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        (STATE / f"{host}.pid").write_text(str(process.pid))
    print(f"testbed up: {len(hosts)} hosts; APIs at http://{PREFIX}.N:{API_PORT}/v1; logs in {STATE}")
    if args.wait:
        wait_ready(hosts, args.wait)


def statuses(hosts: list[str]) -> dict[str, dict[str, Any] | None]:
    result: dict[str, dict[str, Any] | None] = {}
    for host in hosts:
        try:
            with urllib.request.urlopen(f"http://{address(host)}:{API_PORT}/v1/status", timeout=3) as response:
                result[host] = json.load(response)
        except (OSError, ValueError):
            result[host] = None
    return result


def wait_ready(hosts: list[str], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        seen = statuses(hosts)
        layouts = {json.dumps((s.get("plan") or {}).get("layout_id")) for s in seen.values() if s}
        if all(s and s["ready"] for s in seen.values()) and len(layouts) == 1:
            print("testbed ready: every peer serves one plan")
            return
        time.sleep(1)
    raise SystemExit(f"testbed: not ready within {timeout_s:.0f} s (logs in {STATE})")


def status(_args: argparse.Namespace) -> None:
    hosts = json.loads((STATE / "hosts.json").read_text())
    for host, state in statuses(hosts).items():
        if state is None:
            print(f"{host}: no answer")
            continue
        plan = state.get("plan") or {}
        stages = " → ".join(f"{s['device']}[{s['start']}:{s['end']})" for s in plan.get("stages", []))
        print(f"{host}: ready={state['ready']} plan={plan.get('plan_id')} {stages}")


def down(_args: argparse.Namespace) -> None:
    hosts = json.loads((STATE / "hosts.json").read_text()) if (STATE / "hosts.json").exists() else host_names(16)
    for host in hosts:
        pid_file = STATE / f"{host}.pid"
        if pid_file.exists():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(int(pid_file.read_text()), signal.SIGTERM)
    time.sleep(1.0)
    for host in hosts:
        pid_file = STATE / f"{host}.pid"
        if pid_file.exists():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(int(pid_file.read_text()), signal.SIGKILL)
            pid_file.unlink()
        sh(f"ip netns del es-{host}", check=False)
        sh(f"ip link del es-v{host}", check=False)
    sh(f"ip link del {BRIDGE}", check=False)
    (STATE / "hosts.json").unlink(missing_ok=True)
    print("testbed down")


def execute(args: argparse.Namespace) -> None:
    os.execvp("ip", ["ip", "netns", "exec", f"es-{args.host}", *args.command])


def main() -> None:
    parser = argparse.ArgumentParser(prog="scripts/testbed", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="action", required=True)
    start = commands.add_parser("up", help="create the hosts and start a peer in each")
    start.add_argument("hosts", type=int, help="how many hosts (1-16)")
    start.add_argument("--default", default="delay 1ms rate 1gbit", help="netem options for every link")
    start.add_argument("--link", action="append", default=[], metavar="hA-hB=NETEM", help="one link, both ways")
    start.add_argument("--slowdown", action="append", default=[], metavar="hI=F", help="host hI computes F× slower")
    start.add_argument("--max-memory", help="per peer, e.g. 256MiB")
    start.add_argument("--model", default="default")
    start.add_argument("--context", type=int, default=512)
    start.add_argument("--objective", choices=["latency", "throughput"], default="latency")
    start.add_argument("--sessions", type=int, default=4, help="concurrent sessions per stage (default 4)")
    start.add_argument("--strategy", default="edgeshard", help="plan with a baseline instead (benchmarks)")
    start.add_argument("--source", metavar="hI", help="the host where prompts come from: stage 0 runs there")
    start.add_argument("--cluster", default="testbed")
    start.add_argument("--reprofile", action="store_true", help="measure every host afresh (no cached profile)")
    start.add_argument("--wait", type=float, default=0, metavar="S", help="wait up to S seconds for a ready plan")
    commands.add_parser("status", help="each peer's readiness and plan")
    commands.add_parser("down", help="stop everything and remove the hosts")
    run = commands.add_parser("exec", help="run a command inside a host")
    run.add_argument("host")
    run.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("testbed: needs root (network namespaces, tc)")
    if args.action == "up" and not 1 <= args.hosts <= 16:
        raise SystemExit("testbed: 1 to 16 hosts")
    {"up": up, "status": status, "down": down, "exec": execute}[args.action](args)


if __name__ == "__main__":
    main()
