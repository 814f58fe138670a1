"""The daemon's lifecycle, decided by pure functions: the node only carries out what they return.

Theory of operation. Every peer turns its view of compatible live peers into a solver cluster
(`View`); `decide(view, state, holding, peer, now)` says what to do next, one action at a time:

    Solve     plan this view (the node runs the planner off the loop, then calls `planned`)
    Load      refuse sessions, say so, build the shard for our units, serve it (`load_failed`
              when that fails)
    Serve     let the stage serve a layout, keeping its units or dropping them
    Announce  put what the stage serves (and, after a failed load, no memory) in our record
    Wait      nothing to do until `until`, or until the view changes

A view is planned once it has held still for `SETTLE_S` (joins come in bursts), at once when a
peer has left since the last decision (its sessions are failing over and wait for a plan).
After a plan is adopted the peer converges on it: load its units (taking over the tensors it
holds), serve the plan's layout, announce it. The phases, as a table (h11-style):

    phase        what holds                                     leaves for
    no-plan      no view planned yet                            loading, infeasible
    loading      a plan is adopted; our stage does not serve    serving, standby, failed,
                 it yet, or our record does not say so          loading (a newer layout), infeasible
    serving      our stage holds our units and serves the plan  loading (a new layout), infeasible
    standby      the plan gives us no stage; we said so         loading (a new layout), infeasible
    infeasible   the live peers cannot hold the model           loading (a view that fits)
    failed       our units could not be loaded: we offer no     loading (the next plan, without us),
                 memory, so the next plan leaves us out         infeasible

Same view, same plan and same layout on every peer: nothing here reads a clock of its own or
any state beyond its arguments.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

from edgeshard.discovery.records import PeerId, PeerRecord
from edgeshard.solver import Cluster, DeviceId, Plan, Stage

from ..pipeline.layouts import ReadyLayout

SETTLE_S = 1.0  # a view must hold this long before it is planned
NEVER = float("inf")

Phase = Literal["no-plan", "loading", "serving", "standby", "infeasible", "failed"]


@dataclass(frozen=True)
class View:
    """The cluster this peer would plan now, and what decisions need beside it."""

    cluster: Cluster
    addresses: Mapping[PeerId, str]  # peer traffic addresses, for the layout id
    model: str  # the model fingerprint, for the layout id
    departures: int = 0  # peers that have left so far (a count that only grows)
    incumbent: tuple[Stage, ...] | None = None  # the layout the records show served (stability.py)
    key: str = field(init=False)  # what identifies the view: same key, same plan

    def __post_init__(self) -> None:
        # The running layout is part of what decides the plan (stability.py): a view whose
        # served layout changed is planned again, or peers that solved before and after it
        # became complete could keep different plans.
        object.__setattr__(self, "key", repr((self.cluster.to_document(), self.incumbent)))


@dataclass(frozen=True)
class Holding:
    """What this peer has now: its stage's units and layout, and what its record says."""

    units: tuple[int, int] | None = None  # the stage's shard, [start, end)
    form: str = ""  # the weight form its units are held in
    serving: str = ""  # the layout the stage serves ("" refuses sessions)
    announced: str = ""  # the layout our gossiped record says we serve
    withdrawn: bool = False  # our record offers no memory (after a failed load)


@dataclass(frozen=True)
class Adopted:
    """The plan this peer follows and its layout id."""

    plan: Plan
    layout_id: str


@dataclass(frozen=True)
class State:
    """Where the lifecycle stands."""

    phase: Phase = "no-plan"
    adopted: Adopted | None = None
    problem: str = "no plan yet"  # why requests cannot be served ("" when a plan is adopted)
    planned_key: str | None = None  # the view the current plan (or verdict) was computed for
    pending_key: str | None = None  # a new view waiting to hold still
    pending_since: float = 0.0
    departures_seen: int = 0


# --- actions ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Wait:
    """Nothing to do until `until` (a monotonic time) or a change in the view."""

    until: float


@dataclass(frozen=True)
class Solve:
    """Plan this view."""

    view: View


@dataclass(frozen=True)
class Load:
    """Build the shard for units [start, end) in weight form `form` ("": our own) and serve
    `layout_id` with it."""

    start: int
    end: int
    layout_id: str
    form: str = ""


@dataclass(frozen=True)
class Serve:
    """Serve `layout_id` ("" refuses sessions); `unload` drops the stage's units."""

    layout_id: str
    unload: bool = False


@dataclass(frozen=True)
class Announce:
    """Put `serving` in our record; `withdraw` also offers no memory from now on."""

    serving: str
    withdraw: bool = False


Action = Wait | Solve | Load | Serve | Announce


# --- decisions -------------------------------------------------------------------------------


def layout_id(model: str, result: Plan, addresses: Mapping[str, str]) -> str:
    """What a route depends on: the model and, per stage, the peer, its address and units (and
    the form it holds them in: a stage that changes form reloads).

    Not the solver's plan_id: that also hashes measured costs, so a link figure that moves
    without moving a split point would change it and fail over every session for nothing."""
    stages = [[s.device, addresses.get(s.device, ""), s.start, s.end, s.form] for s in result.stages]
    canonical = json.dumps({"model": model, "stages": stages}, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def stage_of(plan: Plan, peer: PeerId) -> Stage | None:
    """This peer's stage in the plan, if it has one."""
    device = DeviceId(peer)  # a peer is planned as the device of the same name
    return next((s for s in plan.stages if s.device == device), None)


def decide(view: View, state: State, holding: Holding, peer: PeerId, now: float) -> tuple[State, Action]:
    """The next action for this peer, and the state it leaves.

    A peer that could not load withdraws before anything else (a plan made while it still
    offers memory would give it the same units again). A departure re-plans at once; otherwise
    the peer first finishes converging on the plan it has (a half-loaded stage helps nobody),
    then plans a new view once it has held still."""
    if state.phase == "failed" and not holding.withdrawn:
        return state, Announce("", withdraw=True)
    if view.key != state.planned_key:
        if view.departures > state.departures_seen:
            return replace(state, pending_key=None, departures_seen=view.departures), Solve(view)
        if view.key != state.pending_key:
            state = replace(state, pending_key=view.key, pending_since=now)
    else:
        state = replace(state, pending_key=None, departures_seen=view.departures)
    action = _converge(state, holding, peer)
    if not isinstance(action, Wait):
        return state, action
    if state.phase == "loading" and state.adopted is not None:  # converged on the adopted plan
        mine = stage_of(state.adopted.plan, peer)
        state = replace(state, phase="serving" if mine is not None else "standby")
    if state.pending_key is not None:
        if now - state.pending_since >= SETTLE_S:
            return replace(state, pending_key=None, departures_seen=view.departures), Solve(view)
        return state, Wait(state.pending_since + SETTLE_S)
    return state, action


def _converge(state: State, holding: Holding, peer: PeerId) -> Action:
    """What brings the stage and our record in line with the adopted plan (or with none)."""
    if state.adopted is None:  # no-plan, infeasible or failed: refuse sessions, keep the units
        if holding.serving:
            return Serve("")
        return Announce("") if holding.announced else Wait(NEVER)
    layout = state.adopted.layout_id
    mine = stage_of(state.adopted.plan, peer)
    if mine is None:
        if holding.units is not None or holding.serving != layout:
            return Serve(layout, unload=True)
    elif holding.units != (mine.start, mine.end) or holding.form != mine.form:
        return Load(mine.start, mine.end, layout, mine.form)
    elif holding.serving != layout:
        return Serve(layout)
    if holding.announced != holding.serving:
        return Announce(holding.serving)
    return Wait(NEVER)


# --- transitions on results ------------------------------------------------------------------


@dataclass(frozen=True)
class Infeasible:
    """The planner's verdict that the view's devices cannot hold the model."""

    reason: str


@dataclass(frozen=True)
class SolverFault:
    """The planner failed for another reason (a bug in the view-to-cluster step)."""

    reason: str


def planned(state: State, view: View, outcome: Plan | Infeasible | SolverFault) -> State:
    """Take the planner's answer for `view`."""
    state = replace(state, planned_key=view.key)
    match outcome:
        case Infeasible(reason):
            devices = len(view.cluster.devices)
            problem = f"the {devices} live peer(s) cannot hold the model: {reason}"
            return replace(state, phase="infeasible", adopted=None, problem=problem)
        case SolverFault(reason):
            return replace(state, problem=f"planner error: {reason}")
        case Plan():
            addresses = {str(peer): address for peer, address in view.addresses.items()}
            layout = layout_id(view.model, outcome, addresses)
            same = state.adopted is not None and state.adopted.layout_id == layout
            phase = state.phase if same and state.phase in ("serving", "standby") else "loading"
            return replace(state, phase=phase, adopted=Adopted(outcome, layout), problem="")


def load_failed(state: State, start: int, end: int, error: str) -> State:
    """Our units could not be loaded: leave the plan (the next one is made without us)."""
    problem = f"this peer cannot load units [{start}, {end}): {error}; re-planning without it"
    return replace(state, phase="failed", adopted=None, problem=problem)


# --- routing ---------------------------------------------------------------------------------


def ready_layout(state: State, records: Sequence[PeerRecord]) -> ReadyLayout | str:
    """The adopted plan's route when every stage's peer serves it, else why not."""
    adopted = state.adopted
    if adopted is None:
        return state.problem or "no plan yet"
    by_peer = {record.peer_id: record for record in records}
    urls = []
    for stage in adopted.plan.stages:
        record = by_peer.get(PeerId(stage.device))
        if record is None:
            return f"stage peer {stage.device} is gone; re-planning"
        if record.serving != adopted.layout_id:
            return f"stage peer {stage.device} is loading layout {adopted.layout_id}"
        urls.append(record.address)
    return ReadyLayout(adopted.layout_id, tuple(urls))
