"""The daemon's lifecycle as pure decisions: settle and urgent re-plans, loading, deaths, a peer
that cannot load, infeasible views, readiness. No processes, no sockets: plain data in, an
action out, and the real planner on small clusters."""

from __future__ import annotations

from dataclasses import replace

import pytest
from edgeshard.discovery.forms import FormFigures
from edgeshard.discovery.records import PeerId, PeerRecord
from edgeshard.peer.daemon.lifecycle import (
    NEVER,
    SETTLE_S,
    Announce,
    Holding,
    Infeasible,
    Load,
    Serve,
    Solve,
    State,
    View,
    Wait,
    decide,
    load_failed,
    planned,
    ready_layout,
    stage_of,
)
from edgeshard.peer.daemon.planview import cluster_from_view
from edgeshard.peer.pipeline.layouts import ReadyLayout
from edgeshard.solver import InfeasibleError, Plan, Stage, Unit, plan

GiB = 2**30
UNITS = [
    Unit("embed", GiB // 2, 1024),
    *(Unit(f"layer{i}", GiB // 2, 1024) for i in range(4)),
    Unit("head", GiB // 2, 16),
]
A, B, C = PeerId("a"), PeerId("b"), PeerId("c")


def record(peer: PeerId, memory: int = 2 * GiB, serving: str = "") -> PeerRecord:
    return PeerRecord(peer, 1, 0, f"http://{peer}:7420", "c", "model", memory, (1.0,) * len(UNITS), serving=serving)


THREE_PEERS = [record(A, memory=GiB), record(B, memory=GiB), record(C, memory=GiB)]  # all three needed


def view_of(records: list[PeerRecord], departures: int = 0) -> View:
    cluster = cluster_from_view(records, "model", UNITS)
    return View(cluster, {r.peer_id: r.address for r in records}, "model", departures)


def solve(view: View) -> Plan | Infeasible:
    try:
        return plan(view.cluster, "latency")
    except InfeasibleError as error:
        return Infeasible(str(error))


def converge(state: State, view: View, peer: PeerId, holding: Holding, now: float) -> tuple[State, Holding]:
    """Carry out actions the way the node does (minus the effects) until the peer waits."""
    for _ in range(10):
        state, action = decide(view, state, holding, peer, now)
        match action:
            case Wait():
                return state, holding
            case Solve(wanted):
                state = planned(state, wanted, solve(wanted))
            case Load(start, end, layout, form):
                holding = replace(holding, units=(start, end), form=form, serving=layout, announced="")
            case Serve(layout, unload):
                holding = replace(holding, units=None if unload else holding.units, serving=layout)
            case Announce(serving, withdraw):
                holding = replace(holding, announced=serving, withdrawn=holding.withdrawn or withdraw)
    raise AssertionError("the lifecycle did not settle in 10 actions")


def test_a_new_view_is_planned_once_it_holds_still() -> None:
    view = view_of([record(A), record(B)])
    state, action = decide(view, State(), Holding(), A, now=100.0)
    assert action == Wait(100.0 + SETTLE_S) and state.phase == "no-plan"
    state, action = decide(view, state, Holding(), A, now=100.0 + SETTLE_S / 2)
    assert action == Wait(100.0 + SETTLE_S)
    # Another peer joins: the clock starts again for the new view.
    bigger = view_of([record(A), record(B), record(C)])
    state, action = decide(bigger, state, Holding(), A, now=100.0 + SETTLE_S * 0.9)
    assert action == Wait(100.0 + SETTLE_S * 1.9)
    state, action = decide(bigger, state, Holding(), A, now=100.0 + SETTLE_S * 1.9)
    assert action == Solve(bigger)


def test_a_departure_re_plans_at_once() -> None:
    state, _ = converge(State(), view_of([record(A), record(B), record(C)]), A, Holding(), now=0.0)
    state, _ = converge(state, view_of([record(A), record(B), record(C)]), A, Holding(), now=5.0)
    after_death = view_of([record(A), record(B)], departures=1)
    state, action = decide(after_death, state, Holding(), A, now=5.01)
    assert action == Solve(after_death)
    # The departure is taken into account once: the next decision does not re-plan again.
    state = planned(state, after_death, solve(after_death))
    _, action = decide(after_death, state, Holding(), A, now=5.02)
    assert not isinstance(action, Solve)


def test_a_peer_loads_its_units_serves_then_announces() -> None:
    view = view_of(THREE_PEERS)
    state = planned(State(pending_key=view.key, pending_since=0.0), view, solve(view))
    assert state.phase == "loading" and state.adopted is not None
    mine = stage_of(state.adopted.plan, A)
    assert mine is not None  # 3 GiB of units, 1 GiB each: every peer has a stage
    layout = state.adopted.layout_id
    state, action = decide(view, state, Holding(), A, now=2.0)
    assert action == Load(mine.start, mine.end, layout)
    held = Holding(units=(mine.start, mine.end), serving=layout)
    state, action = decide(view, state, held, A, now=2.1)
    assert action == Announce(layout) and state.phase == "loading"
    state, action = decide(view, state, replace(held, announced=layout), A, now=2.2)
    assert action == Wait(NEVER) and state.phase == "serving"


def test_a_stage_whose_form_changes_reloads_even_on_the_same_units() -> None:
    view = view_of(THREE_PEERS)
    state = planned(State(pending_key=view.key, pending_since=0.0), view, solve(view))
    assert state.adopted is not None
    mine = stage_of(state.adopted.plan, A)
    assert mine is not None and mine.form == ""
    layout = state.adopted.layout_id
    held = Holding(units=(mine.start, mine.end), form="int4", serving=layout, announced=layout)
    _, action = decide(view, state, held, A, now=2.0)
    assert action == Load(mine.start, mine.end, layout, "")


def test_a_peer_offering_a_compact_form_takes_the_model_in_it_when_the_others_are_gone() -> None:
    int4 = FormFigures("int4", (2.0,) * len(UNITS), tuple(u.bytes // 4 for u in UNITS))
    offering = replace(record(A, memory=GiB), form="float32", forms=(int4,))
    both = [offering, record(B, memory=GiB), record(C, memory=GiB)]
    state, held = converge(State(), view_of(both), A, Holding(), now=0.0)
    state, held = converge(state, view_of(both), A, held, now=5.0)
    assert state.adopted is not None and {s.form for s in state.adopted.plan.stages} <= {"float32", ""}
    alone = view_of([offering], departures=1)  # float32 units need 3 GiB; int4 0.75
    state, held = converge(state, alone, A, held, now=6.0)
    assert state.adopted is not None and state.phase == "serving"
    assert [(s.device, s.form) for s in state.adopted.plan.stages] == [(A, "int4")]
    assert held.units == (0, len(UNITS)) and held.form == "int4"


def test_every_peer_reaches_the_same_layout_and_its_own_stage() -> None:
    records = THREE_PEERS
    states = {}
    for peer in (A, B, C):
        state, _ = converge(State(), view_of(records), peer, Holding(), now=0.0)
        states[peer], holding = converge(state, view_of(records), peer, Holding(), now=SETTLE_S)
        assert states[peer].phase == "serving" and holding.announced == states[peer].adopted.layout_id  # type: ignore[union-attr]
    layouts = {s.adopted.layout_id for s in states.values() if s.adopted}
    assert len(layouts) == 1
    stages = [stage_of(s.adopted.plan, p) for p, s in states.items() if s.adopted]
    assert sorted((s.start, s.end) for s in stages if s) == [(0, 2), (2, 4), (4, 6)]


def test_a_peer_without_a_stage_drops_its_units_and_stands_by() -> None:
    view = view_of([record(A, memory=4 * GiB), record(B, memory=GiB)])  # A alone holds the model
    state = planned(State(), view, solve(view))
    assert state.adopted is not None and stage_of(state.adopted.plan, B) is None
    layout = state.adopted.layout_id
    state, action = decide(view, state, Holding(units=(3, 6), serving="old", announced="old"), B, now=0.0)
    assert action == Serve(layout, unload=True)
    state, holding = converge(state, view, B, Holding(units=(3, 6), serving="old", announced="old"), now=0.0)
    assert state.phase == "standby" and holding == Holding(units=None, serving=layout, announced=layout)


def test_costs_that_move_without_moving_a_split_point_change_nothing() -> None:
    records = THREE_PEERS
    state, _ = converge(State(), view_of(records), A, Holding(), now=0.0)
    state, holding = converge(state, view_of(records), A, Holding(), now=SETTLE_S)
    slower = [replace(r, unit_ms=(1.2,) * len(UNITS)) for r in records]
    moved = view_of(slower)
    assert moved.key != view_of(records).key
    state, action = decide(moved, state, holding, A, now=10.0)
    assert action == Wait(10.0 + SETTLE_S)
    state, action = decide(moved, state, holding, A, now=10.0 + SETTLE_S)
    assert action == Solve(moved)
    again = planned(state, moved, solve(moved))
    assert again.phase == "serving" and again.adopted is not None and state.adopted is not None
    assert again.adopted.layout_id == state.adopted.layout_id
    assert decide(moved, again, holding, A, now=12.0)[1] == Wait(NEVER)


def test_an_infeasible_view_refuses_sessions_and_says_why() -> None:
    records = THREE_PEERS
    state, holding = converge(State(), view_of(records), A, Holding(), now=0.0)
    state, holding = converge(state, view_of(records), A, holding, now=SETTLE_S)
    assert state.phase == "serving" and holding.serving
    two = view_of(records[:2], departures=1)  # 2 GiB cannot hold 3 GiB of units
    state, action = decide(two, state, holding, A, now=5.0)
    assert action == Solve(two)
    state = planned(state, two, solve(two))
    assert state.phase == "infeasible" and state.adopted is None and "cannot hold the model" in state.problem
    state, action = decide(two, state, holding, A, now=5.1)
    assert action == Serve("")  # the units stay (a returning peer may need them); sessions are refused
    state, after = converge(state, two, A, holding, now=5.1)
    assert after.units == holding.units and after.serving == "" and after.announced == ""
    assert ready_layout(state, records) == state.problem


def adopted_by(peer: PeerId, view: View) -> tuple[State, Stage]:
    """The state of `peer` once it adopted the plan for `view`, and its stage in it."""
    state = planned(State(), view, solve(view))
    assert state.adopted is not None
    mine = stage_of(state.adopted.plan, peer)
    assert mine is not None
    return state, mine


def failed_load(view: View) -> tuple[State, PeerId]:
    """The state of a peer of the plan for `view` whose units failed to load, and which peer."""
    state = planned(State(), view, solve(view))
    assert state.adopted is not None
    failing = PeerId(state.adopted.plan.stages[0].device)
    mine = stage_of(state.adopted.plan, failing)
    assert mine is not None
    return load_failed(state, mine.start, mine.end, "out of memory"), failing


def test_a_peer_that_cannot_load_withdraws_and_the_next_plan_leaves_it_out() -> None:
    records = [record(A), record(B), record(C)]
    view = view_of(records)
    state, failing = failed_load(view)
    assert state.phase == "failed" and "cannot load" in state.problem and state.adopted is None
    state, action = decide(view, state, Holding(), failing, now=1.0)
    assert action == Announce("", withdraw=True)
    state, action = decide(view, state, Holding(withdrawn=True), failing, now=1.1)
    assert action == Wait(NEVER)
    # Its record now offers no memory: a new view, planned without it once it holds still.
    without = view_of([record(r.peer_id, memory=0) if r.peer_id == failing else r for r in records])
    state, holding = converge(state, without, failing, Holding(withdrawn=True), now=2.0)
    state, holding = converge(state, without, failing, holding, now=2.0 + SETTLE_S)
    assert state.phase == "standby" and state.adopted is not None
    assert failing not in [s.device for s in state.adopted.plan.stages]
    assert holding.announced == state.adopted.layout_id


def test_a_failed_peer_withdraws_before_even_an_urgent_re_plan() -> None:
    records = [record(A), record(B), record(C)]
    view = view_of(records)
    state, failing = failed_load(view)
    others = [r for r in records if r.peer_id != failing]
    died = view_of([record(failing), others[0]], departures=1)  # a peer left while we loaded
    state, action = decide(died, state, Holding(), failing, now=1.0)
    assert action == Announce("", withdraw=True)  # first: a plan now would give us our units again
    state, action = decide(died, state, Holding(withdrawn=True), failing, now=1.0)
    assert action == Solve(died)


def test_the_phase_says_serving_as_soon_as_the_stage_serves_even_while_a_view_settles() -> None:
    records = THREE_PEERS
    state, mine = adopted_by(A, view_of(records))
    assert state.adopted is not None
    layout = state.adopted.layout_id
    done = Holding(units=(mine.start, mine.end), serving=layout, announced=layout)
    joined = view_of([*records, record(PeerId("d"), memory=GiB)])
    state, action = decide(joined, state, done, A, now=1.0)
    assert action == Wait(1.0 + SETTLE_S) and state.phase == "serving"


def test_a_half_loaded_stage_finishes_before_a_new_view_is_planned_but_not_before_a_death() -> None:
    records = THREE_PEERS
    state, mine = adopted_by(A, view_of(records))
    assert state.adopted is not None
    loaded = Holding(units=(mine.start, mine.end), serving=state.adopted.layout_id)
    joined = view_of([*records, record(PeerId("d"), memory=GiB)])
    _, action = decide(joined, state, loaded, A, now=1.0)
    assert action == Announce(state.adopted.layout_id)  # finish converging while the view settles
    died = view_of(records[1:], departures=1)
    _, action = decide(died, state, loaded, A, now=1.0)
    assert action == Solve(died)


@pytest.mark.parametrize("serving", ["", "other"])
def test_ready_only_when_every_stage_serves_the_layout(serving: str) -> None:
    records = THREE_PEERS
    view = view_of(records)
    state = planned(State(), view, solve(view))
    assert state.adopted is not None
    layout = state.adopted.layout_id
    serving_all = [replace(r, serving=layout) for r in records]
    route = ready_layout(state, serving_all)
    assert isinstance(route, ReadyLayout) and route.layout_id == layout
    by_peer = {r.peer_id: r.address for r in records}
    assert route.urls == tuple(by_peer[PeerId(s.device)] for s in state.adopted.plan.stages)
    one_behind = [*serving_all[:2], replace(records[2], serving=serving)]
    assert "is loading layout" in str(ready_layout(state, one_behind))
    assert "is gone" in str(ready_layout(state, serving_all[:2]))
    assert ready_layout(State(), serving_all) == "no plan yet"
