"""The peer daemon's effects: servers, gossip, mDNS, probes, shard loading, in one task group.

Theory of operation. At start a peer opens the model, profiles this device (cached) and takes
its memory budget; it then serves peer traffic (stage frames, `/gossip`, `/probe`, the origin's
token endpoint) on `--listen` and the user API on `--api-listen`, announces itself over mDNS
and gossips its record. What to do next is never decided here: the plan loop asks
`lifecycle.decide` with the present view and carries out the action it returns (plan, load,
serve, announce, wait). There is no coordinator: every decision is a deterministic function of
the gossiped view, so every peer reaches the same plan and layout.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any, cast

import torch
from aiohttp import web
from edgeshard.discovery.auth import middleware
from edgeshard.discovery.gossip import MAX_BODY as GOSSIP_MAX
from edgeshard.discovery.gossip import Gossip
from edgeshard.discovery.mdns import MdnsDiscovery
from edgeshard.discovery.membership import Membership
from edgeshard.discovery.probe import PROBE_PATH, probe_endpoint
from edgeshard.discovery.records import PeerId
from edgeshard.solver import InfeasibleError, Plan, SolverError, Unit, plan
from transformers import PreTrainedTokenizerBase

from ..api.admission import Admission
from ..api.handlers import Api
from ..api.ollama import mount_both
from ..api.schemas import served_model_name
from ..errors import PeerError
from ..model.compute import on_compute
from ..model.devices import pick_device
from ..model.files import ModelSource, default_cache_dir, open_model
from ..model.grammar import Grammars
from ..model.options import WeightForm
from ..model.profile import device_unit_bytes, load_headroom, memory_budget, offered_forms, unit_sizes
from ..model.text import stop_token_ids
from ..pipeline.failover import NoRouteError, wait_for
from ..pipeline.layouts import ReadyLayout
from ..pipeline.origin import Origin
from ..pipeline.servers import start_server
from ..pipeline.stage import StageServer
from .config import API_PORT, PEER_PORT, PeerConfig, default_state_dir, split_host_port
from .identity import Identity, advertised_host, first_record, signed_membership, startup_line
from .lifecycle import (
    Announce,
    Holding,
    Infeasible,
    Load,
    Serve,
    Solve,
    SolverFault,
    State,
    View,
    Wait,
    decide,
    load_failed,
    planned,
    ready_layout,
)
from .planview import add_predictions, describe_plan, entry_groups, plannable, route_problem, view_of
from .probing import LinkFigures, probe_forever
from .roster import Roster
from .security import Security
from .shards import build_shard, loaded_line
from .stability import hold_still
from .state import PeerState
from .status import status_document

log = logging.getLogger("edgeshard.peer")

PLAN_POLL_S = 0.25
FAULT_PAUSE_S = 1.0
ORIGIN_PREFIX = "/origin"


class PeerNode:
    """One `edgeshard-peer`: the API's `Backend` and the carrier of the lifecycle's actions."""

    def __init__(self, config: PeerConfig) -> None:
        self.config = config
        self.security = Security(config)
        self.state = PeerState.open(Path(config.state_dir) if config.state_dir else default_state_dir())
        self.peer_id = PeerId(self.state.signer.peer_id)
        self.device = pick_device(config.device)
        self.cache_dir = Path(config.cache_dir) if config.cache_dir else default_cache_dir()
        # As many sessions as each shard's KV caches were sized for (and counted in the plan).
        auth = self.security.auth
        self.stage = StageServer(None, layout_id="", max_sessions=config.sessions, sign=auth.sign, admit=self._admit)
        self.origin = Origin(prefix=ORIGIN_PREFIX, sign=auth.sign, reuse_prefixes=config.prefix_cache > 0)
        self.lifecycle = State()
        self.links = LinkFigures()
        self.started = time.monotonic()
        self._runners: list[web.AppRunner] = []
        # Set in start():
        self.source: ModelSource
        self.units: list[Unit]
        self.membership: Membership
        self.gossip: Gossip
        self.roster: Roster
        self.identity: Identity
        self._tokenizer: PreTrainedTokenizerBase
        self.api: Api
        self.mdns: MdnsDiscovery | None = None

    async def start(self) -> None:
        """Load what is needed to take part, and start serving (not yet gossiping)."""
        config = self.config
        self.source = await asyncio.to_thread(open_model, config.model, self.cache_dir)
        source, self.origin.hidden_size = self.source, int(self.source.config.hidden_size)
        fingerprint: str = await asyncio.to_thread(lambda: source.fingerprint)
        self._tokenizer = await asyncio.to_thread(source.tokenizer)  # converted once, before the API opens
        self.stage.grammars = Grammars(self.tokenizer, source.config.vocab_size, self.stop_ids())
        profiles = await on_compute(  # where the passes run: one OpenMP team (model/compute.py)
            partial(
                offered_forms,
                source,
                self.cache_dir,
                self.device,
                config.weights,
                config.emulate_slowdown,
                config.reprofile,
                self._batch(),
            )
        )
        profile = profiles[0]
        self.form: WeightForm = profile.form  # what a plan that names no form means
        # The model's units at float32 (what every peer computes alike); this device's own sizes
        # in each form it offers travel in its record.
        context, sessions, cached, kv = config.context, config.sessions, config.prefix_cache, config.kv_cache
        self.units = unit_sizes(source.config, torch.float32, context, sessions, cached, kv)
        sizes = partial(
            device_unit_bytes, config=source.config, context=context, sessions=sessions, cached=cached, kv=kv
        )
        memory = memory_budget(self.device, config.max_memory, load_headroom(profiles))

        host, port = split_host_port(config.listen, PEER_PORT)
        tls, fingerprint_tls = self.security.server_tls(self.state.directory)
        scheme = "https" if tls else "http"
        runner, bound = await start_server(self._mount_peer, host, port, client_max_size=GOSSIP_MAX, ssl_context=tls)
        self._runners.append(runner)
        bound_port = int(bound.rsplit(":", 1)[1])
        advertised = advertised_host(config, host)
        peer_url = f"{scheme}://{advertised}:{bound_port}"
        self.origin.url = peer_url + ORIGIN_PREFIX
        self.identity = Identity(config, self.peer_id, peer_url, self.device, self.form)
        key, incarnation = self.state.signer.public_key, self.state.next_incarnation()
        own = first_record(self.identity, fingerprint, memory, profiles, key, incarnation, fingerprint_tls, sizes)
        self.membership = signed_membership(own, self.state, config.dead_after_s)
        bootstrap = [f"{scheme}://{address}" if "://" not in address else address for address in config.bootstrap]
        self.pin = self.stage.links.pin = self.origin.links.pin = self.security.pin(self.membership.view)
        gossip = (self.membership, bootstrap, config.gossip_interval_s)
        self.gossip = Gossip(*gossip, auth=self.security.auth, pin=self.pin)
        self.roster = Roster(config.cluster, self.membership, self.gossip, self.links, self.origin)
        self.gossip.on_change = self.roster.changed
        api_host, api_port = split_host_port(config.api_listen, API_PORT)
        admission, grammars = Admission(config.sessions, config.queue), self.stage.grammars
        self.api = Api(self, admission, api_key=config.api_key, grammars=grammars)
        mount = partial(mount_both, self.api)  # OpenAI's routes and Ollama's
        runner, api_url = await start_server(mount, api_host, api_port, cancel_on_disconnect=True)
        self._runners.append(runner)
        if config.mdns:
            where = (self.peer_id, advertised, bound_port, config.cluster, fingerprint, self.roster.found)
            on_lost, interfaces = self.roster.lost, config.interface or None
            self.mdns = MdnsDiscovery(*where, on_lost, interfaces=interfaces, tls=bool(tls))
            await self.mdns.start()
        log.info("%s", startup_line(self.identity, api_url, fingerprint, memory, sum(profile.unit_ms)))
        self.security.announce()

    def _mount_peer(self, app: web.Application) -> None:
        app.middlewares.append(middleware(self.security.auth, self.security.on_refused))
        self.stage.add_routes(app)
        self.origin.add_routes(app)
        app.router.add_post("/gossip", self._gossip_endpoint)
        app.router.add_get(PROBE_PATH, probe_endpoint)

    async def _gossip_endpoint(self, request: web.Request) -> web.Response:
        if not hasattr(self, "gossip"):
            return web.Response(status=503, text="starting")
        response: web.Response = await self.gossip.handle(request)
        return response

    async def run(self) -> None:
        """Gossip, plan and probe until cancelled."""
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self.gossip.run())
            tasks.create_task(self._plan_loop())
            tasks.create_task(
                probe_forever(
                    self.peer_id,
                    self.membership.view,
                    self.roster.link_measured,
                    self.stage.busy,
                    self.security.auth,
                    self.pin,
                )
            )

    async def leave(self) -> int:
        """Leave the cluster (this process is stopping; `run` is over): our record frozen and
        certified dead by ourselves, the certificate pushed to every peer at once, an mDNS goodbye.
        The others re-plan without us now; our stage and origin go on serving until `close`.
        Returns how many peers heard it directly."""
        told = await self.gossip.leave()
        if self.mdns is not None:
            with contextlib.suppress(Exception):
                await self.mdns.stop()
            self.mdns = None
        return told

    async def close(self) -> None:
        """Say goodbye over mDNS, stop serving, free the shard."""
        if self.mdns is not None:
            with contextlib.suppress(Exception):
                await self.mdns.stop()
        if hasattr(self, "gossip"):
            await self.gossip.close()
        await self.origin.close()
        await self.stage.close()
        for runner in reversed(self._runners):
            await runner.cleanup()
        self.state.close()

    @property
    def model_name(self) -> str:
        """The model id shown to clients."""
        return served_model_name(self.config.model)

    @property
    def context(self) -> int:
        """Positions a session may hold."""
        return self.config.context

    def tokenizer(self) -> PreTrainedTokenizerBase:
        """The tokenizer, loaded at start."""
        return self._tokenizer

    def stop_ids(self) -> Sequence[int]:
        """The model's end-of-sequence ids."""
        return stop_token_ids(self.source.config)

    async def wait_ready_layout(self, timeout_s: float) -> ReadyLayout:
        """A ready layout, waiting up to `timeout_s` (NoRouteError with the reason); at once when
        the live peers cannot hold the model (waiting would not help until devices return)."""

        def state() -> ReadyLayout | str:
            route = ready_layout(self.lifecycle, self.membership.view())
            if self.lifecycle.phase == "infeasible" and not isinstance(route, ReadyLayout):
                raise NoRouteError(self.lifecycle.problem)
            return route

        return await wait_for(state, timeout_s)

    def _admit(self, route: tuple[str, ...], hop: int, origin: str) -> str | None:
        adopted = self.lifecycle.adopted  # the stage checked that the frame's layout is the one served
        stages = adopted.plan.stages if adopted is not None and adopted.layout_id == self.stage.layout_id else None
        return route_problem(stages, self.membership.view(), self.peer_id, route, hop, origin, ORIGIN_PREFIX)

    def status(self) -> dict[str, Any]:
        """This peer's view, plan and readiness (GET /v1/status)."""
        records = self.membership.view()
        _fit, excluded = plannable(records, self.membership.own)
        document = status_document(
            self.identity,
            time.monotonic() - self.started,
            self.lifecycle,
            ready_layout(self.lifecycle, records),
            records,
            self.membership.health(self.gossip.clock()),
            excluded,
            self.stage.status(),
        )
        load = self.api.load()
        if (adopted := self.lifecycle.adopted) is not None:  # measured beside predicted, at this load
            costed = (self.membership.own, self.units, adopted.plan.stages, self.config.objective)
            add_predictions(document["plan"], load, records, *costed, self.config.sessions, self._batch())
        document["api"] = load
        document["security"] = self.security.status()
        return document

    def current_view(self) -> View:
        """The view this peer would plan now (compatible live peers only)."""
        members = self.membership
        view, excluded = view_of(members.view(), members.own, self.units, self.roster.departures, self._batch())
        self.roster.excluded(excluded)
        return view

    def _holding(self) -> Holding:
        shard = self.stage.shard
        own = self.membership.own
        return Holding(
            units=(shard.start, shard.end) if shard is not None else None,
            form=shard.form if shard is not None else "",
            serving=self.stage.layout_id or "",
            announced=own.serving,
            withdrawn=own.memory_bytes == 0,
        )

    async def _plan_loop(self) -> None:
        """Decide and act until cancelled. It never dies: a fault (a bug, a view no check foresaw)
        is logged and the last good plan kept, and the loop tries again after a pause."""
        while True:
            try:
                await self._plan_step()
            except Exception:
                log.exception("plan loop fault: keeping the last good plan, trying again in %.0f s", FAULT_PAUSE_S)
                await asyncio.sleep(FAULT_PAUSE_S)

    async def _plan_step(self) -> None:
        now = time.monotonic()
        self.lifecycle, action = decide(self.current_view(), self.lifecycle, self._holding(), self.peer_id, now)
        match action:
            case Wait(until):
                self.roster.wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(max(0.0, min(until - now, PLAN_POLL_S))):
                        await self.roster.wake.wait()
            case Solve(view):
                await self._solve(view)
            case Load(start, end, layout, form):
                await self._load(start, end, layout, cast(WeightForm, form or self.form))
            case Serve(layout, unload):
                await self._serve(layout, unload)
            case Announce(serving, withdraw):
                self._announce(serving, withdraw)

    async def _solve(self, view: View) -> None:
        outcome: Plan | Infeasible | SolverFault
        objective, strategy = self.config.objective, self.config.strategy

        def solve() -> Plan:
            return hold_still(view.cluster, objective, plan(view.cluster, objective, strategy), view.incumbent)

        try:
            outcome = await asyncio.to_thread(solve)
        except InfeasibleError as error:
            outcome = Infeasible(str(error))
        except (SolverError, ArithmeticError, ValueError) as error:  # a bug, or a view no check foresaw
            log.exception("planner error")
            outcome = SolverFault(str(error))
        before = self.lifecycle.adopted
        self.lifecycle = planned(self.lifecycle, view, outcome)
        adopted = self.lifecycle.adopted
        stages = adopted.plan.stages if adopted else ()
        self.stage.batcher.groups = entry_groups(objective, stages, view.addresses, self.peer_id)
        if adopted is None:
            if isinstance(outcome, Infeasible):
                log.error("no plan: %s", self.lifecycle.problem)
            return
        if before is not None and before.layout_id == adopted.layout_id:
            log.debug("plan %s: same layout %s (only measured costs moved)", adopted.plan.plan_id, adopted.layout_id)
            return
        names = {str(r.peer_id): r.label for r in self.membership.view()}
        log.info("%s", describe_plan(adopted.plan, adopted.layout_id, len(view.cluster.devices), self._batch(), names))

    def _batch(self) -> int:
        """Sessions per pass the plan is costed for: the admitted sessions, for throughput."""
        return self.config.sessions if self.config.objective == "throughput" else 1

    async def _load(self, start: int, end: int, layout: str, form: WeightForm) -> None:
        current = self.stage.shard
        await self.stage.serve(None, "")  # refuse sessions while loading
        self._announce("")
        started = time.perf_counter()
        try:
            shard = await self.stage.run_on_worker(
                lambda: build_shard(self.source, self.config, self.device, form, start, end, current)
            )
        except (MemoryError, RuntimeError, OSError, ValueError, PeerError) as error:
            log.error("cannot load units [%d, %d): %s; leaving the plan", start, end, error)
            self.lifecycle = load_failed(self.lifecycle, start, end, str(error))
            return
        await self.stage.serve(shard, layout)
        log.info("%s", loaded_line(shard, time.perf_counter() - started))

    async def _serve(self, layout: str, unload: bool) -> None:
        current = self.stage.shard
        if unload and current is not None:
            log.info("unloaded units [%d, %d): this peer has no stage in layout %s", current.start, current.end, layout)
        await self.stage.serve(None if unload else current, layout)

    def _announce(self, serving: str, withdraw: bool = False) -> None:
        shard = self.stage.shard
        units = (shard.start, shard.end) if serving and shard is not None else ()
        held = {"units": units, "units_form": shard.form if units and shard is not None else ""}
        if withdraw:  # offer no memory: the next plan leaves this peer out instead of waiting on it
            self.membership.announce(serving=serving, memory_bytes=0, **held)
        else:
            self.membership.announce(serving=serving, **held)
        self.gossip.nudge()  # origins wait to see every stage serve the new layout
