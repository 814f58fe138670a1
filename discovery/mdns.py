"""mDNS: announce this peer as `_edgeshard._tcp.local.` and browse for the others.

python-zeroconf's async API. The TXT record carries what a peer needs before talking to another
one: its id, protocol version, cluster name and model fingerprint; mismatching peers are found
but reported as such (the caller logs and ignores them). `interfaces` picks where multicast
goes (all by default; tests use 127.0.0.1). Found peers are delivered as `Found` values to a
callback; the gossip layer then takes over with real records over HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from zeroconf import IPVersion, ServiceStateChange, Zeroconf
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

log = logging.getLogger(__name__)

SERVICE_TYPE = "_edgeshard._tcp.local."
PROTOCOL_VERSION = "2"  # the peer wire (frames) changed in 2
RESOLVE_TIMEOUT_MS = 3000


@dataclass(frozen=True)
class Found:
    """A peer seen over mDNS."""

    peer_id: str
    address: str  # http://host:port for peer traffic
    cluster: str
    model: str
    version: str


def peer_of(instance: str) -> str:
    """The peer id in an instance name "ID@CLUSTER._edgeshard._tcp.local." (or "ID@CLUSTER-2...")."""
    return instance.removesuffix("." + SERVICE_TYPE).rpartition("@")[0] or instance.removesuffix("." + SERVICE_TYPE)


def _text(properties: dict[bytes, bytes | None], key: str) -> str:
    value = properties.get(key.encode())
    return value.decode(errors="replace") if value else ""


class MdnsDiscovery:
    """Announce ourselves; report the peers we find (and those that leave) to callbacks."""

    def __init__(
        self,
        peer_id: str,
        host: str,
        port: int,
        cluster: str,
        model: str,
        on_found: Callable[[Found], None],
        on_lost: Callable[[str], None] | None = None,
        interfaces: Sequence[str] | None = None,
        tls: bool = False,
    ) -> None:
        self.peer_id, self.host, self.port = peer_id, host, port
        self.cluster, self.model = cluster, model
        self.on_found, self.on_lost = on_found, on_lost
        self.interfaces = list(interfaces) if interfaces else None
        self.tls = tls  # peer traffic is https (TXT tls=1), so finds are dialled with TLS
        self._zeroconf: AsyncZeroconf | None = None
        self._browser: AsyncServiceBrowser | None = None
        self._info: AsyncServiceInfo | None = None
        self._resolving: set[asyncio.Task[None]] = set()

    def _instance(self) -> str:
        # The cluster is part of the name: two clusters on one LAN may both have a peer "p1".
        return f"{self.peer_id}@{self.cluster}.{SERVICE_TYPE}"

    async def start(self) -> None:
        """Register our service and start browsing."""
        if self.interfaces is not None:
            self._zeroconf = AsyncZeroconf(interfaces=self.interfaces, ip_version=IPVersion.V4Only)
        else:
            self._zeroconf = AsyncZeroconf(ip_version=IPVersion.V4Only)
        self._info = AsyncServiceInfo(
            SERVICE_TYPE,
            self._instance(),
            addresses=[socket.inet_aton(self.host)],
            port=self.port,
            properties={
                "id": self.peer_id,
                "v": PROTOCOL_VERSION,
                "cluster": self.cluster,
                "model": self.model,
                **({"tls": "1"} if self.tls else {}),
            },
            server=f"{self.peer_id}.local.",
        )
        # The async API returns a task that finishes once the announcements are sent. A peer that
        # restarts right after a crash (no goodbye sent) can find its old record still cached on
        # the LAN: then it takes "name-2" (RFC 6762 conflict resolution); peers are identified by
        # the TXT id, not by the instance name.
        await (await self._zeroconf.async_register_service(self._info, allow_name_change=True))
        if self._info.name != self._instance():
            log.warning("mDNS: %s is still announced on the network; announcing as %s", self.peer_id, self._info.name)
        self._browser = AsyncServiceBrowser(self._zeroconf.zeroconf, [SERVICE_TYPE], handlers=[self._on_change])

    def _on_change(self, zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange) -> None:
        if self._info is not None and name == self._info.name:
            return
        if state_change is ServiceStateChange.Removed:
            if self.on_lost is not None:
                self.on_lost(peer_of(name))
            return
        # Resolving is async; the browser calls us synchronously on the loop. The task is kept
        # in a set owned by this object and cancelled in stop().
        task = asyncio.get_running_loop().create_task(self._resolve(zeroconf, service_type, name))
        self._resolving.add(task)
        task.add_done_callback(self._resolving.discard)

    async def _resolve(self, zeroconf: Zeroconf, service_type: str, name: str) -> None:
        info = AsyncServiceInfo(service_type, name)
        if not await info.async_request(zeroconf, RESOLVE_TIMEOUT_MS):
            return
        addresses = info.parsed_addresses(IPVersion.V4Only)
        if not addresses or info.port is None:
            return
        properties = info.properties
        self.on_found(
            Found(
                peer_id=_text(properties, "id") or peer_of(name),
                address=f"{'https' if _text(properties, 'tls') == '1' else 'http'}://{addresses[0]}:{info.port}",
                cluster=_text(properties, "cluster"),
                model=_text(properties, "model"),
                version=_text(properties, "v"),
            )
        )

    async def stop(self) -> None:
        """Unregister, stop browsing, close."""
        for task in list(self._resolving):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._browser is not None:
            await self._browser.async_cancel()
        if self._zeroconf is not None:
            if self._info is not None:
                with contextlib.suppress(Exception):  # goodbye packets: others drop us at once
                    await (await self._zeroconf.async_unregister_service(self._info))
            await self._zeroconf.async_close()
