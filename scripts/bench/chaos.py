"""`scripts/chaos`: faults on the testbed while four chats stream; is any request lost, does any
peer crash, how long until a fresh request succeeds again.

The testbed (`scripts/testbed`: hosts as network namespaces, a closed cluster) comes up with a
memory cap that splits the model over several hosts; four greedy answers computed once on the
healthy cluster are the reference. Then one fault at a time, while four chats stream (OpenAI's
client, temperature 0) from the API of a host the fault leaves alone:
  sigkill    SIGKILL a stage's peer (restarted afterwards, same state directory)
  sigstop    SIGSTOP a stage's peer for 5 s, then SIGCONT
  restart    stop a stage's peer (SIGTERM) and start it again with the same arguments and state
  partition  two stage hosts cannot reach each other for 8 s (packets silently dropped)
  throttle   the link between two stage hosts shaped to 128 kbit/s for 10 s
  join       a new host with the cluster secret joins mid-generation
  stranger   a host with another secret runs a peer of the same cluster name, and from its
             namespace sends hostile requests: forged gossip, garbage on /stage, the API
             without its key
Each fault prints one row: requests sent (the four chats, and the probes: fresh short requests,
one after another from the fault on, until one succeeds), completed with tokens identical to the
reference, completed with other tokens, failed with a clear error (an HTTP error status or a
streamed error, with a message), lost (no answer and no error within the deadline), how many of
the requests were probes, peer crashes (a peer process the fault did not end that died),
tracebacks new in the peers' logs, and recovery (from the fault until a probe succeeds).
The testbed always comes down at the end. Exit status 1 when a request was lost, a peer crashed,
the stranger was let in, or the cluster did not become whole again after a fault.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # scripts/: testbed.py
import testbed

PROMPTS = [
    "Explain how a rainbow forms, step by step.",
    "Write a short poem about the sea.",
    "List three uses of copper and say why.",
    "Describe how the gears of a bicycle work.",
]
SESSIONS = 6  # per stage: the 4 chats, a recovery probe and one spare, so probes never queue
# A chat with no answer and no error by then is lost. Longer than the peers' own bounds (a step
# fails after 120 s without a token, fail-over gives up 60 s later), so their errors come first.
DEADLINE_S = 240.0
RECOVERY_DEADLINE_S = 200.0  # probes stop trying (no recovery) after this
PROBE_TOKENS = 2
PROBE_PAUSE_S = 1.0
MID_GENERATION_WAIT_S = 90.0  # for every chat to stream a few tokens before the fault
STOP_S = 5.0
PARTITION_S = 8.0
THROTTLE_S, THROTTLE_RATE = 10.0, "128kbit"
UNREACHABLE_MAC = "02:00:00:00:00:00"  # a neighbour entry to nobody: packets vanish silently
HEALTHY_WAIT_S = 240.0
SETTLE_S = 3.0  # after the cluster is whole: link probes land and may move the plan once more
STRANGER_UP_S = 120.0  # for the stranger's peer to start (torch, the model, its profile)
STRANGER_WATCH_S = 20.0  # then this long it has to get in: mDNS finds, gossip rounds
HOSTILE_TIMEOUT_S = 90.0


# --- requests ----------------------------------------------------------------------------------


@dataclass
class Outcome:
    kind: str  # "identical", "differ", "error" (clear), "lost"
    detail: str = ""
    failovers: int = 0


class Chat(threading.Thread):
    """One streamed greedy chat, classified against its reference when it ends."""

    def __init__(self, api: str, key: str, model: str, prompt: str, reference: list[int], max_tokens: int) -> None:
        super().__init__(daemon=True)  # a lost chat must not keep the script alive
        self.api, self.key, self.model, self.prompt = api, key, model, prompt
        self.reference, self.max_tokens = reference, max_tokens
        self.streamed = 0  # text chunks so far: when the fault goes in
        self.token_ids: list[int] = []
        self.outcome: Outcome | None = None

    def run(self) -> None:
        import openai

        try:
            self.outcome = self._ask()
        except openai.APIStatusError as error:
            said = error.body.get("message") if isinstance(error.body, dict) else None
            self.outcome = Outcome("error", f"HTTP {error.status_code}: {said or error.message}")
        except openai.APIConnectionError as error:  # timeouts too: no answer and no message
            self.outcome = Outcome("lost", f"{type(error).__name__}: {error}")
        except openai.APIError as error:  # an error the server streamed, with its message
            self.outcome = Outcome("error", error.message)
        except Exception as error:  # a stream cut without a word (httpx read errors): lost
            self.outcome = Outcome("lost", f"{type(error).__name__}: {error}")

    def _ask(self) -> Outcome:
        from openai import OpenAI

        client = OpenAI(base_url=f"{self.api}/v1", api_key=self.key, max_retries=0, timeout=DEADLINE_S)
        stream = client.chat.completions.create(
            model=self.model,
            messages=[{"role": "user", "content": self.prompt}],
            temperature=0,
            max_tokens=self.max_tokens,
            stream=True,
        )
        extra: dict[str, Any] | None = None
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                self.streamed += 1
            if chunk.choices and chunk.choices[0].finish_reason:
                extra = (chunk.model_extra or {}).get("edgeshard") or {}
        if extra is None:
            return Outcome("lost", "the stream ended without a finish and without an error")
        self.token_ids = list(extra.get("token_ids", []))
        failovers = len(extra.get("failovers", []))
        if self.token_ids == self.reference[: len(self.token_ids)] and len(self.token_ids) == min(
            self.max_tokens, len(self.reference)
        ):
            return Outcome("identical", failovers=failovers)
        return Outcome("differ", f"tokens {self.token_ids} vs {self.reference}", failovers)


def finish(chats: list[Chat], deadline: float) -> list[Outcome]:
    """Each chat's outcome; one still running at `deadline` is lost."""
    for chat in chats:
        chat.join(max(0.0, deadline - time.monotonic()))
    return [
        c.outcome if c.outcome and not c.is_alive() else Outcome("lost", f"no answer in {DEADLINE_S:.0f} s")
        for c in chats
    ]


class Recovery(threading.Thread):
    """Fresh short requests, one after another from the fault on, until one completes."""

    def __init__(self, bed: Bed, since: float) -> None:
        super().__init__(daemon=True)
        self.bed, self.since = bed, since
        self.outcomes: list[Outcome] = []
        self.seconds: float | None = None

    def run(self) -> None:
        deadline = self.since + RECOVERY_DEADLINE_S
        while time.monotonic() < deadline:
            probe = self.bed.chat(0, PROBE_TOKENS)
            probe.start()
            self.outcomes += finish([probe], time.monotonic() + DEADLINE_S)
            if self.outcomes[-1].kind in {"identical", "differ"}:
                self.seconds = time.monotonic() - self.since
                return
            time.sleep(PROBE_PAUSE_S)


# --- the cluster -------------------------------------------------------------------------------


@dataclass
class Bed:
    """The testbed as the faults see it."""

    members: list[str]  # hosts whose peers belong to the cluster
    api_host: str  # the chats' entry: never a victim
    key: str
    model: str = ""
    tokens: int = 48
    references: list[list[int]] = field(default_factory=list)
    strangers: list[str] = field(default_factory=list)
    ended: set[str] = field(default_factory=set)  # hosts whose peer the fault ended on purpose
    stranger: dict[str, Any] = field(default_factory=dict)  # what the stranger fault saw

    @property
    def api(self) -> str:
        return f"http://{testbed.address(self.api_host)}:{testbed.API_PORT}"

    def chat(self, index: int, max_tokens: int) -> Chat:
        reference = self.references[index] if self.references else []
        return Chat(self.api, self.key, self.model, PROMPTS[index], reference, max_tokens)

    def status(self, host: str) -> dict[str, Any] | None:
        return testbed.statuses([host], self.key)[host]

    def stages(self) -> list[str]:
        """The hosts of the running plan's stages, in order (as the chats' entry sees it)."""
        state = self.status(self.api_host) or {}
        return [str(s["device"]) for s in (state.get("plan") or {}).get("stages", [])]

    def victims(self) -> list[str]:
        """Stage hosts other than the chats' entry, in route order."""
        victims = [host for host in self.stages() if host != self.api_host]
        if not victims:
            raise RuntimeError(f"the plan {self.stages()} has no stage to hurt but the chats' entry")
        return victims

    def pid(self, host: str) -> int:
        pid = testbed.peer_pid(host)
        assert pid is not None, f"{host} has no peer"
        return pid


def label(peer: dict[str, Any]) -> str:
    """How a status document names a peer: its name when it has one, else its id."""
    return str(peer.get("name") or peer["id"])


def whole(bed: Bed) -> str | None:
    """None when every member answers, is ready, serves one layout and sees every member alive;
    else what is missing."""
    seen = testbed.statuses(bed.members, bed.key)
    for host, state in seen.items():
        if state is None or not state.get("ready"):
            return f"{host}: {'no answer' if state is None else 'not ready: ' + str(state.get('reason'))}"
        alive = {label(p) for p in state["peers"] if p.get("health") == "alive"}
        if missing := set(bed.members) - alive:
            return f"{host} does not see {sorted(missing)} alive"
    layouts = {json.dumps(((s or {}).get("plan") or {}).get("layout_id")) for s in seen.values()}
    return None if len(layouts) == 1 else f"{len(layouts)} layouts"


def wait_whole(bed: Bed, timeout_s: float = HEALTHY_WAIT_S) -> str | None:
    deadline = time.monotonic() + timeout_s
    while (missing := whole(bed)) and time.monotonic() < deadline:
        time.sleep(1.0)
    if missing is None:
        time.sleep(SETTLE_S)
        missing = whole(bed)
    return missing


def sighted(bed: Bed, stranger: str) -> list[str]:
    """The members whose status lists the stranger (by name, id or address) or plans with it."""
    address = testbed.address(stranger)
    found = []
    for host, state in testbed.statuses(bed.members, bed.key).items():
        entries = (state or {}).get("peers", []) + ((state or {}).get("plan") or {}).get("stages", [])
        names = {str(e.get(k)) for e in entries for k in ("name", "id", "device")}
        addresses = " ".join(str(e.get("address")) for e in entries)
        if stranger in names or f"//{address}:" in addresses:
            found.append(host)
    return found


# --- faults ------------------------------------------------------------------------------------
# A fault is a generator. Up to its first yield it goes in (the recovery clock starts then); up to
# its second it lasts (a stop, a partition), and that yield is the row's note; the rest heals
# what the fault left behind (a killed peer restarted) once the chats are over.
Fault = Callable[[Bed], Iterator[str]]


def sigkill(bed: Bed) -> Iterator[str]:
    victim = bed.victims()[0]
    os.killpg(bed.pid(victim), signal.SIGKILL)
    bed.ended.add(victim)
    yield ""
    yield f"killed {victim}"
    testbed.start_peer(victim)
    bed.ended.discard(victim)


def sigstop(bed: Bed) -> Iterator[str]:
    victim = bed.victims()[0]
    os.killpg(bed.pid(victim), signal.SIGSTOP)
    yield ""
    try:
        time.sleep(STOP_S)
    finally:
        os.killpg(bed.pid(victim), signal.SIGCONT)
    yield f"stopped {victim} for {STOP_S:.0f} s"


def restart(bed: Bed) -> Iterator[str]:
    victim = bed.victims()[0]
    bed.ended.add(victim)
    os.killpg(bed.pid(victim), signal.SIGTERM)
    yield ""
    testbed.stop_peer(victim)  # waits for it to leave
    testbed.start_peer(victim)
    bed.ended.discard(victim)
    yield f"restarted {victim}"


def pair(bed: Bed) -> tuple[str, str]:
    """Two hosts next to each other on the route, the chats' entry left out when the plan allows."""
    victims, stages = bed.victims(), bed.stages()
    return (victims[0], victims[1]) if len(victims) >= 2 else (stages[0], stages[1])


def netns(host: str, command: str) -> None:
    testbed.sh(f"ip netns exec es-{host} {command}")


def both_ways(
    bed: Bed, seconds: float, start: Callable[[str, str], str], undo: Callable[[str, str], str]
) -> Iterator[str]:
    """A fault on the link between two stage hosts, both directions, for `seconds`; the hosts."""
    a, b = pair(bed)
    for one, other in ((a, b), (b, a)):
        netns(one, start(one, other))
    yield ""
    try:
        time.sleep(seconds)
    finally:
        for one, other in ((a, b), (b, a)):
            netns(one, undo(one, other))
    yield f"{a} and {b}"


def partition(bed: Bed) -> Iterator[str]:
    def cut(_one: str, other: str) -> str:
        return f"ip neigh replace {testbed.address(other)} lladdr {UNREACHABLE_MAC} nud permanent dev eth0"

    steps = both_ways(bed, PARTITION_S, cut, lambda _one, other: f"ip neigh del {testbed.address(other)} dev eth0")
    yield next(steps)
    yield f"{next(steps)} cut off from each other for {PARTITION_S:.0f} s"


def throttle(bed: Bed) -> Iterator[str]:
    rate, _ = testbed.split_rate(testbed.read_options()["default"])

    def shaped(to: str) -> Callable[[str, str], str]:
        return lambda _one, other: (
            f"tc class change dev eth0 parent 1: classid {testbed.link_class(other)} htb rate {to}"
        )

    steps = both_ways(bed, THROTTLE_S, shaped(THROTTLE_RATE), shaped(rate))
    yield next(steps)
    hosts = next(steps).replace(" and ", " ↔ ")
    yield f"{hosts} at {THROTTLE_RATE} for {THROTTLE_S:.0f} s"


def join(bed: Bed) -> Iterator[str]:
    host = testbed.add_host(testbed.secret_path())
    bed.members.append(host)
    # The fault is the moment the cluster sees the newcomer (its peer needs seconds to start).
    deadline = time.monotonic() + STRANGER_UP_S
    while not (joined := host in {label(p) for p in (bed.status(bed.api_host) or {}).get("peers", [])}):
        if time.monotonic() > deadline:
            break
        time.sleep(0.5)
    yield ""
    yield f"{host} joined" if joined else f"{host} not seen within {STRANGER_UP_S:.0f} s"


def stranger(bed: Bed) -> Iterator[str]:
    from edgeshard.discovery.auth import write_secret

    other = testbed.STATE / "stranger.secret"
    if not other.exists():
        write_secret(other)
    host = testbed.add_host(other)
    bed.strangers.append(host)
    yield ""
    refusals: list[dict[str, Any]] = []  # the namespace is there already: no need to wait for its peer
    hostile = threading.Thread(target=lambda: refusals.extend(hostile_requests(host, bed.members)), daemon=True)
    hostile.start()
    seen, up = watch_stranger(bed, host)
    hostile.join(HOSTILE_TIMEOUT_S)
    bed.stranger = {"host": host, "up": up, "seen_by": sorted(seen), "hostile": refusals}
    accepted = [f"{r['request']} → {r['answer']}" for r in refusals if r["accepted"]]
    verdict = f"let in by {sorted(seen)}" if seen else "kept out"
    yield f"{host} {verdict}; hostile requests accepted: {len(accepted)}/{len(refusals)}" + (
        "" if up else " (its peer never answered)"
    )


def watch_stranger(bed: Bed, host: str) -> tuple[set[str], bool]:
    """The members that ever listed the stranger, from its start until STRANGER_WATCH_S after its
    peer first answered (it is up and gossiping), and whether it ever did."""
    seen: set[str] = set()
    up_at, give_up = None, time.monotonic() + STRANGER_UP_S
    while time.monotonic() < (give_up if up_at is None else up_at + STRANGER_WATCH_S):
        seen |= set(sighted(bed, host))
        if up_at is None and testbed.statuses([host], bed.key)[host] is not None:
            up_at = time.monotonic()
        time.sleep(1.0)
    return seen, up_at is not None


def hostile_requests(host: str, members: list[str]) -> list[dict[str, Any]]:
    """Run the hostile requests from inside the stranger's namespace; their answers."""
    targets = [testbed.address(m) for m in members]
    script = str(Path(__file__).resolve())
    command = ["ip", "netns", "exec", f"es-{host}", sys.executable, script, "--hostile", *targets]
    env = {**os.environ, "EDGESHARD_CHAOS_SELF": testbed.address(host)}  # what the forged record claims
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=HOSTILE_TIMEOUT_S, env=env)
    except subprocess.TimeoutExpired:
        return [{"target": "*", "request": "hostile requests", "answer": "timed out", "accepted": False}]
    try:
        answers: list[dict[str, Any]] = json.loads(done.stdout)
        return answers
    except ValueError:
        return [{"target": "*", "request": "hostile requests", "answer": done.stderr[-300:], "accepted": False}]


FAULTS: dict[str, Fault] = {
    "sigkill": sigkill,
    "sigstop": sigstop,
    "restart": restart,
    "partition": partition,
    "throttle": throttle,
    "join": join,
    "stranger": stranger,
}
SHORT = ["sigkill", "sigstop", "stranger"]


# --- hostile requests (run inside the stranger's namespace) ------------------------------------


def gossip_bodies(own: str) -> list[tuple[str, bytes]]:
    """Crafted /gossip bodies: none carries the cluster's credentials."""
    import msgpack

    record = {
        "v": 2, "id": "0123456789abcdef", "name": "h1", "key": os.urandom(32), "inc": 2**40, "hb": 1,
        "addr": f"http://{own}:{testbed.PEER_PORT}", "cert": "", "cluster": "testbed", "model": "0" * 64,
        "mem": 2**40, "unit_ms": [0.001] * 32, "links": [], "serving": "", "src": True, "pre": [], "set": "",
        "units": [], "bs": [],
    }  # fmt: skip
    forged = [msgpack.packb(record, use_bin_type=True), os.urandom(64)]
    return [
        ("garbage", os.urandom(4096)),
        ("an empty digest (asks for every record)", msgpack.packb({"d": {}, "r": [], "x": []})),
        ("a forged record (a fake h1 with 1 TiB)", msgpack.packb({"d": {}, "r": [forged], "x": []})),
        ("a forged death certificate", msgpack.packb({"d": {}, "r": [], "x": [forged]})),
        ("5 MiB of zeros", bytes(5 * 2**20)),
    ]


def stage_garbage() -> list[bytes | str]:
    """Frames for /stage that no stage should act on."""
    import msgpack

    bogus_open = {"t": "open", "session": 1, "route": ["http://198.18.0.250:1"], "hop": 0, "layout": "x"}
    return [os.urandom(512), msgpack.packb(bogus_open), "not a frame", b"\xdd\xff\xff\xff\xff"]


async def hostile(targets: list[str]) -> list[dict[str, Any]]:
    """Each request to each member: what came back, and whether it was accepted (2xx, or a
    WebSocket opened)."""
    import aiohttp

    own = os.environ.get("EDGESHARD_CHAOS_SELF", "")
    answers: list[dict[str, Any]] = []
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        for target in targets:
            peer, api = f"http://{target}:{testbed.PEER_PORT}", f"http://{target}:{testbed.API_PORT}"
            for what, body in gossip_bodies(own):
                answers.append(await http(session, target, f"POST /gossip with {what}", "POST", peer + "/gossip", body))
            answers.append(await websocket(session, target, peer + "/stage"))
            chat = json.dumps({"model": "x", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}).encode()
            api_chat = api + "/v1/chat/completions"
            answers.append(
                await http(session, target, "POST /v1/chat/completions without the key", "POST", api_chat, chat)
            )
            answers.append(
                await http(session, target, "GET /v1/status without the key", "GET", api + "/v1/status", b"")
            )
    return answers


async def http(session: Any, target: str, what: str, method: str, url: str, body: bytes) -> dict[str, Any]:
    import aiohttp

    try:
        async with session.request(method, url, data=body or None) as response:
            text = (await response.text(errors="replace"))[:120]
            answer, accepted = f"HTTP {response.status} {text}".strip(), response.status < 300
    except (aiohttp.ClientError, OSError, TimeoutError) as error:
        answer, accepted = f"{type(error).__name__}: {error}", False
    return {"target": target, "request": what, "answer": answer, "accepted": accepted}


async def websocket(session: Any, target: str, url: str) -> dict[str, Any]:
    """Open /stage, send garbage frames, read what comes back for 2 s."""
    import aiohttp

    what = "WebSocket /stage with garbage frames"
    try:
        async with session.ws_connect(url, timeout=aiohttp.ClientWSTimeout(ws_close=2)) as socket:
            for frame in stage_garbage():
                await (socket.send_str(frame) if isinstance(frame, str) else socket.send_bytes(frame))
            replies = 0
            with contextlib.suppress(TimeoutError):
                while not socket.closed:
                    message = await asyncio.wait_for(socket.receive(), 2.0)
                    if message.type in {aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR}:
                        break
                    replies += 1
            answer = f"opened; {replies} replies, then {'closed' if socket.closed else 'left open'}"
            return {"target": target, "request": what, "answer": answer, "accepted": True}
    except aiohttp.WSServerHandshakeError as error:
        return {"target": target, "request": what, "answer": f"HTTP {error.status} {error.message}", "accepted": False}
    except (aiohttp.ClientError, OSError, TimeoutError) as error:
        return {"target": target, "request": what, "answer": f"{type(error).__name__}: {error}", "accepted": False}


# --- one fault, the whole run ------------------------------------------------------------------


@dataclass
class Row:
    fault: str
    sent: int = 0  # requests: the four chats and the probes
    identical: int = 0
    differ: int = 0
    failed: int = 0
    lost: int = 0
    probes: int = 0  # of those sent
    crashes: int = 0
    tracebacks: int = 0
    recovery_s: float | None = None
    note: str = ""
    whole_again: bool = True
    chats_s: float = 0.0  # from the chats' start until the last ended
    heal_s: float = 0.0  # from then until the cluster was whole again
    details: list[str] = field(default_factory=list)


def log_sizes(hosts: list[str]) -> dict[str, int]:
    sizes = {}
    for host in hosts:
        path = testbed.STATE / f"{host}.log"
        sizes[host] = path.stat().st_size if path.exists() else 0
    return sizes


def new_tracebacks(since: dict[str, int]) -> list[str]:
    """The exception line of every traceback written to a peer log after `since`."""
    found = []
    for host, offset in since.items():
        with (testbed.STATE / f"{host}.log").open("rb") as log:
            log.seek(offset)
            lines = log.read().decode(errors="replace").splitlines()
        for index, line in enumerate(lines):
            if line.startswith("Traceback (most recent call last)"):
                tail = (x for x in lines[index + 1 :] if x and not x.startswith((" ", "Traceback", "During")))
                found.append(f"{host}: {next(tail, '?')[:200]}")
    return found


def crashed(bed: Bed) -> list[str]:
    """Peers that died although no fault ended them (strangers included: a refused peer must not
    crash either)."""
    return [h for h in bed.members + bed.strangers if h not in bed.ended and not testbed.alive(bed.pid(h))]


def wait_mid_generation(chats: list[Chat]) -> None:
    """Until every chat has streamed some text (or ended): the fault lands mid-generation."""
    deadline = time.monotonic() + MID_GENERATION_WAIT_S
    while time.monotonic() < deadline and not all(c.streamed >= 3 or not c.is_alive() for c in chats):
        time.sleep(0.1)


def run_fault(bed: Bed, name: str) -> Row:
    """Four chats, the fault mid-generation, probes from the fault on, then the fault healed and
    the cluster whole again; the row that tells."""
    row = Row(name)
    logs = log_sizes(bed.members)
    chats = [bed.chat(i, bed.tokens) for i in range(len(PROMPTS))]
    started = time.monotonic()
    for chat in chats:
        chat.start()
    wait_mid_generation(chats)
    steps = FAULTS[name](bed)
    next(steps)
    recovery = Recovery(bed, time.monotonic())
    recovery.start()
    row.note = next(steps)
    outcomes = finish(chats, started + DEADLINE_S)
    row.chats_s = round(time.monotonic() - started, 1)
    recovery.join(max(0.0, recovery.since + RECOVERY_DEADLINE_S + DEADLINE_S - time.monotonic()))
    died = set(crashed(bed))
    healing = time.monotonic()
    with contextlib.suppress(StopIteration):
        next(steps)
    missing = wait_whole(bed)
    row.heal_s = round(time.monotonic() - healing, 1)
    died |= set(crashed(bed))
    tally(row, outcomes + recovery.outcomes, len(recovery.outcomes))
    row.recovery_s = recovery.seconds
    row.crashes = len(died)
    row.details += [f"crashed: {h}" for h in sorted(died)]
    tracebacks = new_tracebacks({h: logs.get(h, 0) for h in bed.members + bed.strangers})
    row.tracebacks = len(tracebacks)
    row.details += [f"traceback: {t}" for t in tracebacks]
    if missing:
        row.whole_again = False
        row.note += f"; NOT WHOLE AGAIN: {missing}"
    return row


def tally(row: Row, outcomes: list[Outcome], probes: int) -> None:
    """Count the requests' outcomes into the row; what they said, once per distinct message."""
    row.sent, row.probes = len(outcomes), probes
    row.identical = sum(o.kind == "identical" for o in outcomes)
    row.differ = sum(o.kind == "differ" for o in outcomes)
    row.failed = sum(o.kind == "error" for o in outcomes)
    row.lost = sum(o.kind == "lost" for o in outcomes)
    failovers = sum(o.failovers for o in outcomes)
    row.note += f"; {failovers} fail-overs" if failovers else ""
    said = Counter(f"{o.kind}: {o.detail}" for o in outcomes if o.detail)
    row.details += [f"{n}× {text}" if n > 1 else text for text, n in said.items()]


def references(bed: Bed) -> list[list[int]]:
    """The greedy answers of the healthy cluster, asked as the faults will ask them."""
    chats = [bed.chat(i, bed.tokens) for i in range(len(PROMPTS))]
    for chat in chats:
        chat.start()
    outcomes = finish(chats, time.monotonic() + DEADLINE_S)
    if any(o.kind == "lost" or o.kind == "error" for o in outcomes):
        raise SystemExit(f"chaos: the healthy cluster did not answer: {[o.detail for o in outcomes]}")
    return [chat.token_ids for chat in chats]


def bring_up(hosts: int, max_memory: str) -> Bed:
    options = ["up", str(hosts), "--max-memory", max_memory, "--context", "512", "--sessions", str(SESSIONS)]
    options += ["--default", "rate 1gbit", "--wait", "300"]
    with contextlib.redirect_stdout(sys.stderr):
        testbed.up(testbed.build_parser().parse_args(options))
    key = testbed.read_api_key()
    members = testbed.read_hosts()
    bed = Bed(members, members[0], key)
    if missing := wait_whole(bed):
        raise SystemExit(f"chaos: the testbed never became whole: {missing}")
    bed.api_host = bed.stages()[0]  # stage 0's host: the chats' entry, never a victim
    from openai import OpenAI

    bed.model = OpenAI(base_url=f"{bed.api}/v1", api_key=key, max_retries=0, timeout=30).models.list().data[0].id
    return bed


HEADER = [
    "fault",
    "sent",
    "identical",
    "differ",
    "failed",
    "lost",
    "probes",
    "crashes",
    "tracebacks",
    "recovery s",
    "note",
]


def table(rows: list[Row]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|---|" + "---:|" * (len(HEADER) - 2) + "---|"]
    for r in rows:
        recovery = f"{r.recovery_s:.1f}" if r.recovery_s is not None else "never"
        numbers = [r.sent, r.identical, r.differ, r.failed, r.lost, r.probes, r.crashes, r.tracebacks]
        lines.append("| " + " | ".join([r.fault, *map(str, numbers), recovery, r.note]) + " |")
    return "\n".join(lines)


def say(started: float, text: str) -> None:
    print(f"chaos [{time.monotonic() - started:3.0f} s] {text}", file=sys.stderr, flush=True)


def run(args: argparse.Namespace, faults: list[str]) -> tuple[list[Row], Bed | None]:
    rows: list[Row] = []
    bed = None
    started = time.monotonic()
    try:
        bed = bring_up(args.hosts, args.max_memory)
        say(started, f"{len(bed.members)} hosts up, plan {' → '.join(bed.stages())}, chats via {bed.api_host}")
        bed.tokens = args.tokens
        bed.references = references(bed)
        say(started, f"references: {[len(r) for r in bed.references]} tokens")
        for name in faults:
            if time.monotonic() - started > args.budget:
                rows.append(Row(name, note=f"skipped: over the {args.budget:.0f} s budget", whole_again=False))
                continue
            say(started, f"{name} ...")
            try:
                rows.append(run_fault(bed, name))
            except (Exception, SystemExit) as error:  # the table so far still prints, the testbed comes down
                rows.append(Row(name, note=f"chaos failed: {type(error).__name__}: {error}", whole_again=False))
            say(started, table(rows[-1:]).splitlines()[-1])
            if not rows[-1].whole_again:
                break  # the next fault would measure this one's damage
    finally:
        with contextlib.redirect_stdout(sys.stderr):
            testbed.down(argparse.Namespace())
    return rows, bed


def main() -> int:
    parser = argparse.ArgumentParser(prog="scripts/chaos", description=__doc__.split("\n\n")[0])
    parser.add_argument("--short", action="store_true", help="CI: sigkill, sigstop and the stranger on 3 hosts")
    parser.add_argument(
        "--faults", help=f"comma-separated, of {','.join(FAULTS)} (default: all; --short: {','.join(SHORT)})"
    )
    parser.add_argument("--hosts", type=int, help="testbed hosts (default 4; --short 3)")
    parser.add_argument("--max-memory", help="per peer: splits the model (default 256MiB; --short 512MiB)")
    parser.add_argument("--tokens", type=int, help="tokens per chat (default 48; --short 16)")
    parser.add_argument("--budget", type=float, help="seconds; faults after it are skipped (default 3600; --short 600)")
    parser.add_argument("--json", metavar="FILE", help="also write the rows as JSON to FILE")
    parser.add_argument("--hostile", nargs="+", metavar="ADDRESS", help=argparse.SUPPRESS)  # inside the stranger
    args = parser.parse_args()
    if args.hostile:
        print(json.dumps(asyncio.run(hostile(args.hostile))))
        return 0
    if os.geteuid() != 0:
        raise SystemExit("chaos: needs root (the testbed's network namespaces)")
    short = args.short
    faults = args.faults.split(",") if args.faults else SHORT if short else list(FAULTS)
    if unknown := set(faults) - set(FAULTS):
        raise SystemExit(f"chaos: unknown faults {sorted(unknown)}")
    args.hosts = args.hosts or (3 if short else 4)
    args.max_memory = args.max_memory or ("512MiB" if short else "256MiB")
    args.tokens = args.tokens or (16 if short else 48)
    args.budget = args.budget or (600.0 if short else 3600.0)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so the testbed still comes down
    started = time.monotonic()
    rows, bed = run(args, faults)
    wall_s = time.monotonic() - started
    print(table(rows))
    for row in rows:
        for detail in row.details:
            print(f"  {row.fault}: {detail}")
    print(f"{len(rows)} faults in {wall_s:.0f} s")
    stranger = bed.stranger if bed else {}
    if args.json:
        document = {"hosts": args.hosts, "tokens": args.tokens, "wall_s": round(wall_s, 1), "stranger": stranger}
        Path(args.json).write_text(json.dumps(document | {"rows": [asdict(r) for r in rows]}, indent=1))
    bad = any(r.lost or r.crashes or not r.whole_again for r in rows) or bool(stranger.get("seen_by"))
    return 1 if bad or len(rows) < len(faults) else 0


if __name__ == "__main__":
    sys.exit(main())
