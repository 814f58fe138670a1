"""The peer daemon: discovery, gossip, planning, a stage, an origin and the user API in one loop.

Theory of operation. At start a peer opens the model, profiles this device (cached) and takes
its memory budget; it then serves peer traffic (stage frames, `/gossip`, `/probe`, the origin's
token endpoint) on `--listen` and the user API on `--api-listen`, announces itself over mDNS
and gossips its record. Every peer turns its view of compatible live peers into a solver
cluster and solves it (the same view gives the same plan and plan_id everywhere); once the view
has been steady for `SETTLE_S`, it adopts the plan: loads the units the plan gives it (taking
over tensors it already holds), then announces what it serves. A plan is *ready* when every
stage's peer serves it; requests are routed only over ready plans, and a stage asked for a plan
it does not serve answers "stale-plan". What peers announce and check is the plan's *layout id*
(model, and each stage's peer, address and units): the solver's plan_id also hashes the measured
costs, so a link figure that moves without moving a split point changes the plan_id but not
the layout, and requests in flight are left alone. A dead peer leaves the view, which changes the plan;
requests in flight fail over (see failover.py). There is no coordinator: every decision is a
deterministic function of the gossiped view.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import psutil
from aiohttp import web
from edgeshard.discovery.failure import FailurePolicy
from edgeshard.discovery.gossip import Gossip
from edgeshard.discovery.mdns import Found, MdnsDiscovery
from edgeshard.discovery.membership import Membership
from edgeshard.discovery.planview import cluster_from_view, plannable, source_of
from edgeshard.discovery.probe import PROBE_PATH, measure_link, probe_endpoint, settle
from edgeshard.discovery.records import LinkMeasure, PeerId, PeerRecord
from edgeshard.solver import Cluster, InfeasibleError, Plan, SolverError, plan

from .config import PeerConfig, split_host_port
from .errors import PeerError
from .failover import NoRouteError, Route, wait_for
from .modelfile import ModelSource, default_cache_dir, open_model
from .origin import Origin
from .profile import Profile, load_or_measure, memory_budget, unit_sizes
from .serving import start_server
from .shard import Shard
from .stage import StageServer
from .torch_options import DTYPES, pick_device

log = logging.getLogger("edgeshard.peer")

SETTLE_S = 1.0  # a view must hold this long before it is planned (joins come in bursts)
PLAN_POLL_S = 0.25
PROBE_INTERVAL_S = 60.0
ORIGIN_PREFIX = "/origin"


@dataclass(frozen=True)
class Adopted:
    """The plan this peer follows and its layout id."""

    plan: Plan
    layout_id: str


def layout_id(model: str, result: Plan, addresses: Mapping[str, str]) -> str:
    """What a route depends on: the model and, per stage, the peer, its address and units."""
    stages = [[s.device, addresses.get(s.device, ""), s.start, s.end] for s in result.stages]
    canonical = json.dumps({"model": model, "stages": stages}, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def advertised_host(config: PeerConfig, listen_host: str) -> str:
    """The address other peers reach us at: --advertise, --interface, the listen address, or
    this host's first non-loopback IPv4 address."""
    if config.advertise:
        return config.advertise
    if config.interface:
        return config.interface[0]
    if listen_host not in {"0.0.0.0", "", "::"}:
        return listen_host
    for addresses in psutil.net_if_addrs().values():
        for address in addresses:
            if address.family == socket.AF_INET and not address.address.startswith("127."):
                return str(address.address)
    return "127.0.0.1"


class PeerNode:
    """One `edgeshard-peer`."""

    def __init__(self, config: PeerConfig) -> None:
        self.config = config
        self.peer_id = PeerId(config.peer_id)
        self.device = pick_device(config.device)
        self.dtype = DTYPES[config.dtype]
        self.cache_dir = Path(config.cache_dir) if config.cache_dir else default_cache_dir()
        # As many sessions as each shard's KV caches were sized for (and counted in the plan).
        self.stage = StageServer(None, plan_id="", max_sessions=config.sessions)
        self.origin = Origin(prefix=ORIGIN_PREFIX)
        self.adopted: Adopted | None = None
        self.plan_problem = "no plan yet"
        self.infeasible = False  # the live peers cannot hold the model: requests fail at once
        self.started = time.monotonic()
        self._runners: list[web.AppRunner] = []
        self._wake = asyncio.Event()
        self._urgent = False  # a peer left: re-plan without waiting for the view to settle
        self._excluded_logged: dict[PeerId, str] = {}
        self._published_links: dict[PeerId, tuple[float, float]] = {}
        self._addresses: dict[PeerId, str] = {}
        # Set in start():
        self.source: ModelSource
        self.profile: Profile
        self.membership: Membership
        self.gossip: Gossip
        self.mdns: MdnsDiscovery | None = None
        self.api_url = ""
        self.peer_url = ""

    # --- start and stop --------------------------------------------------------------------

    async def start(self) -> None:
        """Load what is needed to take part, and start serving (not yet gossiping)."""
        config = self.config
        if config.cache_dir:  # also where file hashes are memoised
            os.environ["EDGESHARD_CACHE"] = config.cache_dir
        self.source = await asyncio.to_thread(open_model, config.model, self.cache_dir)
        source = self.source
        fingerprint: str = await asyncio.to_thread(lambda: source.fingerprint)
        await asyncio.to_thread(self.source.tokenizer)  # converted and cached before the API opens
        self.profile = await asyncio.to_thread(
            load_or_measure,
            self.source,
            self.cache_dir,
            self.device,
            self.dtype,
            config.emulate_slowdown,
            config.reprofile,
        )
        self.units = unit_sizes(self.source.config, self.dtype, config.context, config.sessions)
        memory = memory_budget(self.device, config.max_memory)

        host, port = split_host_port(config.listen, 7420)
        runner, bound = await start_server(self._mount_peer, host, port)
        self._runners.append(runner)
        bound_port = int(bound.rsplit(":", 1)[1])
        advertised = advertised_host(config, host)
        self.peer_url = f"http://{advertised}:{bound_port}"
        self.origin.url = self.peer_url + ORIGIN_PREFIX
        own = PeerRecord(
            peer_id=self.peer_id,
            incarnation=time.time_ns() // 1_000_000,  # a restart always starts higher
            heartbeat=0,
            address=self.peer_url,
            cluster=config.cluster,
            model=fingerprint,
            memory_bytes=memory,
            unit_ms=self.profile.unit_ms,
            source=config.source,
            prefill_ms=self.profile.prefill_ms,
            settings=f"{config.dtype}/context={config.context}/sessions={config.sessions}/{config.objective}",
        )
        self.membership = Membership(own, FailurePolicy(dead_after_s=config.dead_after))
        bootstrap = [f"http://{address}" if "://" not in address else address for address in config.bootstrap]
        self.gossip = Gossip(self.membership, bootstrap, config.gossip_interval, on_change=self._on_change)

        api_host, api_port = split_host_port(config.api_listen, 7421)
        from .api import Api  # the API imports this module's types

        runner, self.api_url = await start_server(Api(self).add_routes, api_host, api_port)
        self._runners.append(runner)
        if config.mdns:
            self.mdns = MdnsDiscovery(
                self.peer_id,
                advertised,
                bound_port,
                config.cluster,
                fingerprint,
                on_found=self._on_found,
                interfaces=config.interface or None,
            )
            await self.mdns.start()
        log.info(
            "peer %s up: peers on %s, API on %s, cluster %r, model %s (%s), %s %s, memory budget %.2f GiB, "
            "%.2f ms/token on this device alone",
            self.peer_id,
            self.peer_url,
            self.api_url,
            config.cluster,
            config.model,
            fingerprint[:12],
            self.device,
            config.dtype,
            memory / 2**30,
            sum(self.profile.unit_ms),
        )

    def _mount_peer(self, app: web.Application) -> None:
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
            tasks.create_task(self._probe_loop())

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

    # --- membership events -----------------------------------------------------------------

    def _on_found(self, found: Found) -> None:
        if found.cluster != self.config.cluster:
            log.info("mDNS: ignoring %s at %s: it belongs to cluster %r", found.peer_id, found.address, found.cluster)
            return
        if found.peer_id not in self.membership.records:
            log.debug("mDNS: found %s at %s", found.peer_id, found.address)
        self.gossip.add_candidate(found.address)

    def _on_change(self, joined: list[PeerId], left: list[PeerId]) -> None:
        for peer in joined:
            record = self.membership.records.get(peer)
            if record is not None and peer not in self._addresses:
                log.info("peer %s joined (%s)", peer, record.address)
            if record is not None:
                self._addresses[peer] = record.address
        for peer in left:
            address = self._addresses.pop(peer, "")
            self._excluded_logged.pop(peer, None)
            self._published_links.pop(peer, None)
            log.warning("peer %s left: declared dead", peer)
            if address:
                self.origin.abort_route(address, "peer-dead", f"peer {peer} was declared dead")
        self._urgent = self._urgent or bool(left)
        self._wake.set()

    # --- planning --------------------------------------------------------------------------

    def current_cluster(self) -> Cluster:
        """The solver cluster for this peer's present view (compatible live peers only)."""
        own = self.membership.own
        fit, excluded = plannable(self.membership.view(), own)
        for peer, why in excluded.items():
            if self._excluded_logged.get(peer) != why:
                self._excluded_logged[peer] = why
                log.warning("peer %s is left out of the plan: it %s", peer, why)
        return cluster_from_view(fit, own.model[:16], self.units, source_of(fit))

    async def _plan_loop(self) -> None:
        planned: str | None = None
        pending: str | None = None
        since = 0.0
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), PLAN_POLL_S)
            self._wake.clear()
            cluster = self.current_cluster()
            key = repr(cluster.to_document())  # the objective is fixed for this peer
            if key == planned:
                continue
            urgent, self._urgent = self._urgent, False
            if key != pending and not urgent:
                pending, since = key, time.monotonic()
                continue
            if time.monotonic() - since < SETTLE_S and not urgent:
                continue
            planned = pending = key
            await self._replan(cluster)

    async def _replan(self, cluster: Cluster) -> None:
        try:
            result = await asyncio.to_thread(plan, cluster, self.config.objective)
        except InfeasibleError as error:
            self.plan_problem = f"the {len(cluster.devices)} live peer(s) cannot hold the model: {error}"
            log.error("no plan: %s", self.plan_problem)
            self.adopted, self.infeasible = None, True
            self.stage.serve(self.stage.shard, "")
            self.membership.announce(serving="")
            self.gossip.nudge()
            return
        except SolverError as error:  # pragma: no cover - a bug in the view-to-cluster step
            self.plan_problem = f"planner error: {error}"
            log.exception("planner error")
            return
        addresses = {r.peer_id: r.address for r in self.membership.view()}
        layout = layout_id(self.membership.own.model, result, addresses)
        previous = self.adopted
        self.adopted = Adopted(result, layout)
        self.plan_problem, self.infeasible = "", False
        if previous is not None and previous.layout_id == layout:
            log.debug("plan %s: same layout %s (only measured costs moved)", result.plan_id, layout)
            return
        stages = " → ".join(f"{s.device}[{s.start}:{s.end})" for s in result.stages)
        log.info(
            "plan %s, layout %s (%s, %d peers): %s; predicted %.1f ms/token, %.1f tokens/s pipelined",
            result.plan_id,
            layout,
            result.objective,
            len(cluster.devices),
            stages,
            result.latency_ms,
            result.throughput_tps,
        )
        await self._load_for(result, layout)

    async def _load_for(self, result: Plan, layout: str) -> None:
        mine = next((s for s in result.stages if s.device == self.peer_id), None)
        current = self.stage.shard
        if mine is None:
            if current is not None:
                self.stage.serve(None, layout)
                log.info(
                    "unloaded units [%d, %d): this peer has no stage in plan %s",
                    current.start,
                    current.end,
                    layout,
                )
        elif current is not None and (current.start, current.end) == (mine.start, mine.end):
            self.stage.serve(current, layout)
        else:
            self.stage.serve(None, "")  # refuse sessions while loading
            self.membership.announce(serving="")
            self.gossip.nudge()
            started = time.perf_counter()
            try:
                shard = await self.stage.run_on_worker(lambda: self._build_shard(mine.start, mine.end, current))
            except (MemoryError, RuntimeError, OSError, ValueError, PeerError) as error:
                # Offer no memory from now on: the next plan leaves this peer out instead of waiting on it.
                log.error("cannot load units [%d, %d): %s; leaving the plan", mine.start, mine.end, error)
                self.adopted = None
                self.membership.announce(serving="", memory_bytes=0)
                self.gossip.nudge()
                return
            if self.adopted is None or self.adopted.layout_id != layout:
                return  # a newer plan arrived while loading; it will load what it needs
            self.stage.serve(shard, layout)
            log.info(
                "loaded units [%d, %d) in %.2f s (%d tensors taken over from the previous shard), %.0f MB",
                mine.start,
                mine.end,
                time.perf_counter() - started,
                shard.reused_tensors,
                shard.weight_bytes() / 1e6,
            )
        self.membership.announce(serving=layout)
        self.gossip.nudge()  # origins wait to see every stage serve the new layout

    def _build_shard(self, start: int, end: int, previous: Shard | None) -> Shard:
        return Shard(
            self.source,
            start,
            end,
            device=self.device,
            dtype=self.dtype,
            max_sessions=self.config.sessions,
            max_context=self.config.context,
            slowdown=self.config.emulate_slowdown,
            reuse=previous,
        )

    # --- routing ---------------------------------------------------------------------------

    def ready_route(self) -> Route | str:
        """The adopted plan's route when every stage's peer serves it, else why not."""
        adopted = self.adopted
        if adopted is None:
            return self.plan_problem or "no plan yet"
        urls = []
        for stage in adopted.plan.stages:
            record = self.membership.records.get(PeerId(stage.device))
            if record is None:
                return f"stage peer {stage.device} is gone; re-planning"
            if record.serving != adopted.layout_id:
                return f"stage peer {stage.device} is loading layout {adopted.layout_id}"
            urls.append(record.address)
        return Route(adopted.layout_id, tuple(urls))

    async def wait_route(self, timeout: float) -> Route:
        """A ready route, waiting up to `timeout` seconds (NoRouteError with the reason); at once
        when the live peers cannot hold the model (waiting would not help until devices return)."""

        def state() -> Route | str:
            route = self.ready_route()
            if self.infeasible and not isinstance(route, Route):
                raise NoRouteError(self.plan_problem)
            return route

        return await wait_for(state, timeout)

    # --- link probes -----------------------------------------------------------------------

    async def _probe_loop(self) -> None:
        probed: dict[PeerId, float] = {}
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
            while True:
                await asyncio.sleep(1.0)
                now = time.monotonic()
                for record in self.membership.view():
                    peer = record.peer_id
                    if peer == self.peer_id or now - probed.get(peer, -1e9) < PROBE_INTERVAL_S:
                        continue
                    probed[peer] = now
                    try:
                        mbps, rtt = await measure_link(session, record.address)
                    except (aiohttp.ClientError, OSError, TimeoutError) as error:
                        log.debug("probe of %s failed: %s", peer, error)
                        continue
                    self._publish_link(peer, mbps, rtt)

    def _publish_link(self, peer: PeerId, mbps: float, rtt_ms: float) -> None:
        old = self._published_links.get(peer)
        new = (settle(old[0] if old else None, mbps), settle(old[1] if old else None, rtt_ms))
        if new == old:
            return
        self._published_links[peer] = new
        live = set(self.membership.records)
        links = tuple(LinkMeasure(p, m, r) for p, (m, r) in sorted(self._published_links.items()) if p in live)
        self.membership.announce(links=links)
        log.info("link to %s: %.0f Mbps, %.2f ms round trip (measured %.0f Mbps, %.2f ms)", peer, *new, mbps, rtt_ms)

    # --- status ----------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """This peer's view, plan and readiness (GET /v1/status)."""
        now = time.monotonic()
        health = self.membership.health(self.gossip.clock())
        route = self.ready_route()
        adopted = self.adopted
        plan_json: dict[str, Any] | None = None
        if adopted is not None:
            plan_json = adopted.plan.to_json() | {"layout_id": adopted.layout_id}
            for stage in plan_json["stages"]:
                record = self.membership.records.get(PeerId(stage["device"]))
                stage["address"] = record.address if record else None
                stage["serving"] = record.serving == adopted.layout_id if record else False
        own = self.membership.own
        _fit, excluded = plannable(self.membership.view(), own)
        return {
            "peer": self.peer_id,
            "address": self.peer_url,
            "cluster": self.config.cluster,
            "model": {"spec": self.config.model, "fingerprint": own.model},
            "device": self.device,
            "dtype": self.config.dtype,
            "uptime_s": round(now - self.started, 1),
            "ready": isinstance(route, Route),
            "reason": None if isinstance(route, Route) else route,
            "plan": plan_json,
            "serving": own.serving,
            "shard": self.stage.status(),
            "peers": [
                {
                    "id": record.peer_id,
                    "address": record.address,
                    "health": health.get(record.peer_id, "alive"),
                    "serving": record.serving,
                    "memory_bytes": record.memory_bytes,
                    "ms_per_token_alone": round(sum(record.unit_ms), 3),
                    "prefill_ms_alone": round(sum(record.prefill_ms), 3),
                    "source": record.source,
                    "excluded": excluded.get(record.peer_id),
                    "links": [{"peer": k.peer, "mbps": k.mbps, "rtt_ms": k.rtt_ms} for k in record.links],
                }
                for record in self.membership.view()
            ],
        }
