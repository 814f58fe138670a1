"""What `edgeshard chat` prints for /plan, /peers, /stats and for a failed turn: pure functions of
the peer's JSON documents (`/v1/status`, a reply's `edgeshard` object), so they are tested alone.
Standard library only: `edgeshard chat --api` stays light."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..api.client import ApiError
from ..errors import PeerError


@dataclass
class ReplyStats:
    """What the REPL knows of its last reply: measured here (time to the first text, the rate of
    the text after it) and, when the peer sent it, the reply's `edgeshard` object."""

    tokens: int | None = None  # the answer's tokens (usage), None when unknown
    prompt_tokens: int | None = None  # the conversation's tokens sent with the turn (usage)
    cached_tokens: int | None = None  # of them, taken from the stages' prefix caches
    ttft_ms: float | None = None  # request sent → first text shown
    ms_per_token: float | None = None  # after the first text, per further token
    interrupted: bool = False
    edgeshard: dict[str, Any] | None = None
    timing: dict[str, Any] | None = None  # the `edgeshard.timing` object (local mode: computed here)
    where: str = "the peer"  # who measured `timing`
    names: dict[str, str] = field(default_factory=dict)  # stage URL → device name, for `timing`


def _num(value: Any, digits: int = 1) -> str:
    return "—" if value is None else f"{float(value):.{digits}f}"


def _label(stage: dict[str, Any]) -> str:
    return str(stage.get("device") or stage.get("peer") or "?")


def render_plan(status: dict[str, Any]) -> str:
    """The adopted plan of a peer's /v1/status: each stage's device, peer id and unit range, and
    the predicted ms per token and tokens/s."""
    plan = status.get("plan")
    if not plan:
        reason = status.get("reason") or "no plan adopted yet"
        return f"no plan yet: {reason}"
    ready = "" if status.get("ready") else f", NOT READY: {status.get('reason')}"
    lines = [
        f"plan {plan.get('plan_id', '?')} (layout {plan.get('layout_id', '?')}, "
        f"objective {plan.get('objective', '?')}){ready}"
    ]
    lines.append(
        f"  {'stage':<5} {'device':<14} {'peer':<18} {'units':<11} {'weights':<8} {'serving':<8} predicted ms/token"
    )
    for index, stage in enumerate(plan.get("stages") or ()):
        units = f"[{stage.get('start')}:{stage.get('end')})"
        serving = "yes" if stage.get("serving") else "no"
        predicted = f"{_num(stage.get('predicted_compute_ms'))} compute, {_num(stage.get('predicted_transfer_ms'))} out"
        lines.append(
            f"  {index:<5} {_label(stage):<14} {stage.get('peer', '?')!s:<18} {units:<11} "
            f"{stage.get('form') or '-':<8} {serving:<8} " + (predicted if "predicted_compute_ms" in stage else "")
        )
    lines.append(
        f"predicted: {_num(plan.get('latency_ms'))} ms/token, {_num(plan.get('throughput_tps'))} tokens/s pipelined"
    )
    return "\n".join(lines)


def render_local_plan(model: str, ranges: Sequence[tuple[int, int]], urls: Sequence[str]) -> str:
    """Local mode's stages: unit ranges split evenly in this process (no planner, no prediction)."""
    lines = [f"local mode: {model} split evenly over {len(ranges)} stage servers in this process (not planned)"]
    lines.append(f"  {'stage':<5} {'units':<11} url")
    for index, (start, end) in enumerate(ranges):
        url = urls[index] if index < len(urls) else "?"
        lines.append(f"  {index:<5} {f'[{start}:{end})':<11} {url}")
    return "\n".join(lines)


def render_peers(status: dict[str, Any]) -> str:
    """The view of a peer's /v1/status: each peer's name, health, memory, ms per token alone,
    the layout it serves, and its links."""
    peers = status.get("peers") or []
    lines = [f"{len(peers)} peer(s) in the view of {status.get('name') or status.get('peer', '?')}:"]
    lines.append(f"  {'name':<14} {'health':<8} {'memory':>9} {'ms/token':>9}  serving")
    for peer in peers:
        memory = f"{peer.get('memory_bytes', 0) / 2**30:.2f} GiB"
        note = f"  (left out: {peer['excluded']})" if peer.get("excluded") else ""
        lines.append(
            f"  {peer.get('name') or peer.get('id', '?'):<14} {peer.get('health', '?'):<8} {memory:>9} "
            f"{_num(peer.get('ms_per_token_alone')):>9}  {peer.get('serving') or '—'}{note}"
        )
        for link in peer.get("links") or ():
            lines.append(
                f"      → {link.get('name') or link.get('peer', '?'):<12} {_num(link.get('mbps'))} Mbps, "
                f"rtt {_num(link.get('rtt_ms'), 2)} ms"
            )
    return "\n".join(lines)


def _timing_lines(timing: dict[str, Any], names: dict[str, str]) -> list[str]:
    lines = [
        f"per token (mean of {timing.get('steps', '?')} decode steps): {_num(timing.get('ms_per_token'))} ms"
        f" (predicted {_num(timing.get('predicted_ms_per_token'))}), time to first token "
        f"{_num(timing.get('ttft_ms'))} ms",
        f"  {'hop':<4} {'stage':<14} {'queue':>8} {'compute':>8} {'other':>8} {'predicted':>10}  (ms)",
    ]
    for stage in timing.get("stages") or ():
        url = str(stage.get("url", "?"))
        lines.append(
            f"  {stage.get('hop', '?')!s:<4} {stage.get('device') or names.get(url, url):<14} "
            f"{_num(stage.get('queue_ms'), 2):>8} {_num(stage.get('compute_ms'), 2):>8} "
            f"{_num(stage.get('other_ms'), 2):>8} {_num(stage.get('predicted_compute_ms'), 2):>10}"
        )
    for link in timing.get("links") or ():
        ends = (str(link.get("from", "?")), str(link.get("to", "?")))
        way = " → ".join(names.get(end, end) for end in ends)
        lines.append(
            f"  link {way:<32} {_num(link.get('transfer_ms'), 2):>8} ms (predicted {_num(link.get('predicted_ms'), 2)})"
        )
    lines.append(f"  all links: {_num(timing.get('transfer_ms'), 2)} ms per token")
    return lines


def render_stats(stats: ReplyStats | None) -> str:
    """/stats: the last reply's time to first token, ms per token and tokens, and where the time
    went per stage and per link when the timing is known."""
    if stats is None:
        return "no reply yet: /stats describes the last one"
    head = "last reply" + (" (interrupted)" if stats.interrupted else "")
    lines = [
        f"{head}: {stats.tokens if stats.tokens is not None else '?'} tokens, time to first token "
        f"{_num(stats.ttft_ms)} ms, {_num(stats.ms_per_token)} ms/token (measured here)"
    ]
    if stats.prompt_tokens is not None:
        lines.append(
            f"prompt: {stats.prompt_tokens} tokens, {stats.cached_tokens or 0} of them reused from the prefix cache, "
            f"{stats.prompt_tokens - (stats.cached_tokens or 0)} computed"
        )
    extra = stats.edgeshard or {}
    if extra.get("failovers"):
        lines.append(f"fail-overs: {len(extra['failovers'])}")
    if extra.get("queued_s"):
        lines.append(f"queued for a session: {extra['queued_s']:.2f} s")
    if stats.timing:
        lines.append(f"as {stats.where} measured it:")
        lines += _timing_lines(stats.timing, stats.names)
    elif stats.interrupted:
        lines.append("no per-stage timing: the reply was stopped before its last chunk")
    else:
        missing = " (no edgeshard.timing in the reply)" if stats.where == "the peer" else ""
        lines.append(f"no per-stage timing: {stats.where} measured none{missing}")
    return "\n".join(lines)


def describe_error(error: PeerError, api: str | None = None) -> str:
    """A failed turn or command in one line, with what to do about it."""
    where = f" --api {api}" if api else ""
    if isinstance(error, ApiError):
        if error.unreachable:
            return f"{error}. Is edgeshard-peer running there? Try `edgeshard status{where}`"
        if error.status == 401:
            return f"{error}: pass the peer's key with --api-key or $EDGESHARD_API_KEY"
        if error.status == 429:
            wait = f"; try again in {error.retry_after_s:g} s" if error.retry_after_s else "; try again shortly"
            return f"{error}{wait}"
        if error.status == 503:
            return f"{error}: /plan and /peers show the cluster (or `edgeshard status{where}`)"
    hint = "; /reset starts afresh" if "context" in str(error) else ""
    return f"{error}{hint}"
