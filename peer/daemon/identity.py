"""Who this peer is to the others: its address, its first gossip record, its fixed identity."""

from __future__ import annotations

import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

import psutil
from edgeshard.discovery.failure import FailurePolicy
from edgeshard.discovery.forms import FormFigures
from edgeshard.discovery.membership import Membership
from edgeshard.discovery.records import PeerId, PeerRecord, sign_record
from edgeshard.solver import EXACT

from ..model.profile import Profile
from ..wire import WIRE_VERSION
from .config import PeerConfig
from .state import PeerState


@dataclass(frozen=True)
class Identity:
    """What a peer is, fixed at start."""

    config: PeerConfig
    peer_id: PeerId
    address: str  # peer traffic URL
    device: str
    form: str = "float32"  # how this device holds its units' weights (--weights, resolved)


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


def planning_settings(config: PeerConfig) -> str:
    """What shapes a plan beyond the model: peers that differ here cannot share one (the wire
    version too: stages that cannot read each other's frames must not share a route)."""
    # Not the weight form: each device holds its own, and its record says what its units take.
    settings = f"context={config.context}/sessions={config.sessions}/{config.objective}"
    if config.tls:  # a TLS peer and a plain one cannot open links to each other
        settings += "/tls"
    if config.strategy != EXACT:  # a benchmark's baseline plan
        settings += f"/{config.strategy}"
    return f"wire{WIRE_VERSION}/{settings}"


def first_record(
    identity: Identity,
    fingerprint: str,
    memory_bytes: int,
    profiles: Sequence[Profile],
    key: bytes,
    incarnation: int,
    cert: str,
    unit_bytes: Callable[[Profile], tuple[int, ...]] = lambda _profile: (),
) -> PeerRecord:
    """Our gossip record at start (`incarnation`: from the state directory, above any before;
    `cert`: our TLS certificate's fingerprint under --tls, else ""): the figures of the forms we
    offer (`profiles`, our own first), each with its unit sizes (`unit_bytes`)."""
    config = identity.config
    profile, *others = profiles
    return PeerRecord(
        peer_id=identity.peer_id,
        incarnation=incarnation,
        heartbeat=0,
        name=config.label,
        key=key,
        cert=cert,
        address=identity.address,
        cluster=config.cluster,
        model=fingerprint,
        memory_bytes=memory_bytes,
        unit_ms=profile.unit_ms,
        source=config.source,
        prefill_ms=profile.prefill_ms,
        settings=planning_settings(config),
        batch_scale=profile.batch_scale,
        pass_ms=profile.pass_ms,
        unit_bytes=unit_bytes(profile),
        form=profile.form,
        forms=tuple(FormFigures(p.form, p.unit_ms, unit_bytes(p), p.batch_scale) for p in others),
    )


def startup_line(identity: Identity, api_url: str, fingerprint: str, memory: int, ms_per_token: float) -> str:
    """The log line of a peer that is up."""
    config = identity.config
    return (
        f"peer {config.label} (id {identity.peer_id}) up: peers on {identity.address}, API on {api_url}, "
        f"cluster {config.cluster!r}, "
        f"model {config.model} ({fingerprint[:12]}), {identity.device} {identity.form} weights, "
        f"memory budget {memory / 2**30:.2f} GiB, {ms_per_token:.2f} ms/token on this device alone"
    )


def signed_membership(own: PeerRecord, state: PeerState, dead_after_s: float) -> Membership:
    """The view, with our record signed by our key and refutations kept in the state directory."""
    sign = partial(sign_record, sign=state.signer.sign)
    return Membership(own, FailurePolicy(dead_after_s=dead_after_s), sign=sign, on_incarnation=state.keep_incarnation)
