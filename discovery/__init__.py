"""Discovery: who is out there and what can they do. Capability records and their merge rule
(`records`), phi-accrual failure detection (`failure`), the membership view with death
certificates (`membership`), push-pull gossip over HTTP (`gossip`), mDNS (`mdns`) and link probes
(`probe`). It imports nothing else of EdgeShard: the daemon turns a view into a solver cluster.

The names below are the package's public surface. They load on first use, so that importing the
pure modules (records, failure, membership) does not pull in aiohttp and zeroconf.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .failure import FailurePolicy, Health, PhiAccrual
    from .gossip import GOSSIP_PATH, Gossip
    from .mdns import Found, MdnsDiscovery
    from .membership import Membership
    from .probe import PROBE_PATH, measure_link, probe_endpoint, settle
    from .records import Clock, Exchange, LinkMeasure, PeerId, PeerRecord, RecordError

_HOMES = {
    "failure": ("FailurePolicy", "Health", "PhiAccrual"),
    "gossip": ("GOSSIP_PATH", "Gossip"),
    "mdns": ("Found", "MdnsDiscovery"),
    "membership": ("Membership",),
    "probe": ("PROBE_PATH", "measure_link", "probe_endpoint", "settle"),
    "records": ("Clock", "Exchange", "LinkMeasure", "PeerId", "PeerRecord", "RecordError"),
}
_MODULE_OF = {name: module for module, names in _HOMES.items() for name in names}
__all__ = [
    "GOSSIP_PATH",
    "PROBE_PATH",
    "Clock",
    "Exchange",
    "FailurePolicy",
    "Found",
    "Gossip",
    "Health",
    "LinkMeasure",
    "MdnsDiscovery",
    "Membership",
    "PeerId",
    "PeerRecord",
    "PhiAccrual",
    "RecordError",
    "measure_link",
    "probe_endpoint",
    "settle",
]


def __getattr__(name: str) -> Any:
    """Load a public name from its module on first use (PEP 562)."""
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_MODULE_OF[name]}", __name__), name)
