"""Discovery: who is out there and what can they do. Capability records and their merge rule
(`records`), phi-accrual failure detection (`failure`), the membership view with death
certificates (`membership`), push-pull gossip over HTTP (`gossip`), mDNS (`mdns`) and link probes
(`probe`). It imports nothing else of EdgeShard: the daemon turns a view into a solver cluster.

The names below are the package's public surface; the modules are importable on their own too.
"""

from .failure import FailurePolicy, Health, PhiAccrual
from .gossip import GOSSIP_PATH, Gossip
from .mdns import Found, MdnsDiscovery
from .membership import Membership
from .probe import PROBE_PATH, measure_link, probe_endpoint, settle
from .records import Clock, Exchange, LinkMeasure, PeerId, PeerRecord, RecordError

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
