"""Time dilation for the testbed (time-warped network emulation: Gupta et al., "To Infinity and
Beyond", NSDI '06). Pure arithmetic, used by scripts/testbed.py and the paper benchmark.

The testbed's hosts share this machine's cores, so emulated devices that should compute in
parallel take turns. Dilated by D, every host runs D times slower than the device it plays: its
compute is stretched to D times the device's time (`--emulate-slowdown` times D), every link's
rate is divided by D and every link delay multiplied by D. Real compute is then a small share of
each host's time (1/(slowdown x D)), so the turns it takes on the shared cores barely move what
is measured; every duration measured is divided back by D (a rate multiplied by D) before it is
reported. The plans are unchanged: every cost is D times larger, and the planner's choices do
not change when all costs scale alike.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

# tc's rate units in bits per second (tc(8): bit, kbit, mbit, gbit, tbit; bps, kbps, ... are bytes)
_BITS = {"bit": 1, "kbit": 1e3, "mbit": 1e6, "gbit": 1e9, "tbit": 1e12}
_BYTES = {"bps": 8, "kbps": 8e3, "mbps": 8e6, "gbps": 8e9, "tbps": 8e12}
_RATE = re.compile(r"^([0-9]*\.?[0-9]+)([a-z]+)$")
_DELAY = re.compile(r"^([0-9]*\.?[0-9]+)(us|ms|s)?$")


def rate_bits(rate: str) -> float:
    """A tc rate ('950mbit', '10Mbit', '1gbit', '125kbps') in bits per second."""
    match = _RATE.match(rate.strip().lower())
    unit = match.group(2) if match else ""
    if match is None or unit not in _BITS | _BYTES:
        raise ValueError(f"not a tc rate: {rate!r}")
    return float(match.group(1)) * (_BITS | _BYTES)[unit]


def delay_ms(delay: str) -> float:
    """A netem delay ('2.1ms', '500us', '1s'; a bare number is ms) in milliseconds."""
    match = _DELAY.match(delay.strip().lower())
    if match is None:
        raise ValueError(f"not a delay: {delay!r}")
    return float(match.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3, None: 1.0}[match.group(2)]


@dataclass(frozen=True)
class Dilation:
    """Dilation by `factor` (1: none)."""

    factor: float = 1.0

    def __post_init__(self) -> None:
        if not self.factor >= 1:
            raise ValueError(f"a dilation factor of at least 1, not {self.factor}")

    def slowdown(self, device: float = 1.0) -> float:
        """The host's `--emulate-slowdown` for a device `device` times slower than this machine."""
        return device * self.factor

    def rate(self, rate: str) -> str:
        """A link rate for tc, D times lower (in whole kbit/s, at least 1)."""
        return f"{max(1, round(rate_bits(rate) / self.factor / 1e3))}kbit"

    def delay_ms(self, milliseconds: float) -> float:
        return milliseconds * self.factor

    def link(self, options: str) -> str:
        """A link's options ('delay 2.1ms rate 950mbit loss 1%'), rate and delay dilated."""
        words = options.split()
        for index, word in enumerate(words[:-1]):
            if word == "rate":
                words[index + 1] = self.rate(words[index + 1])
            elif word == "delay":
                words[index + 1] = f"{self.delay_ms(delay_ms(words[index + 1])):g}ms"
        return " ".join(words)

    def seconds(self, measured: float) -> float:
        """A duration measured on the dilated testbed, in the devices' own time."""
        return measured / self.factor

    def per_second(self, measured: float) -> float:
        """A rate measured on the dilated testbed (tokens/s), in the devices' own time."""
        return measured * self.factor


def choose_factor(hosts: int, cores: int, threads: int, fastest: float, tolerance: float = 0.05) -> float:
    """The smallest whole D that keeps contention's share of a host's time within `tolerance`.

    A host's pass takes its real compute c, stretched to s x D x c (s: its device's slowdown,
    `fastest` the smallest over the hosts). When all hosts compute at once, `hosts` x `threads`
    threads share `cores` cores, so the real part can take k = hosts x threads / cores times c
    at worst, adding (k - 1) x c to the s x D x c the host should take: a share of (k - 1) / (s x D).
    """
    if min(hosts, cores, threads) < 1 or fastest <= 0 or tolerance <= 0:
        raise ValueError("hosts, cores and threads at least 1; fastest and tolerance positive")
    contention = max(1.0, hosts * threads / cores)
    return float(max(1, math.ceil((contention - 1) / (fastest * tolerance))))


def contention_error(factor: float, hosts: int, cores: int, threads: int, slowdown: float) -> float:
    """The worst share of a host's dilated time that contention adds (see `choose_factor`)."""
    contention = max(1.0, hosts * threads / cores)
    return (contention - 1) / (slowdown * factor)


@dataclass(frozen=True)
class Testbed:
    """What the testbed's hosts run under a dilation: links as tc shapes them, each host's
    `--emulate-slowdown` and `--emulate-delay-ms` (the peer emulates delay where the kernel has
    no netem), and what could not be emulated as asked."""

    default: str
    links: dict[frozenset[str], str]
    slowdown: dict[str, float]
    delay_ms: dict[str, float]
    warnings: tuple[str, ...]


def _delay_of(options: str) -> float:
    words = options.split()
    return delay_ms(words[words.index("delay") + 1]) if "delay" in words[:-1] else 0.0


def dilate_testbed(
    hosts: list[str],
    default: str,
    links: dict[frozenset[str], str],
    slowdown: dict[str, float],
    factor: float,
    netem: bool,
) -> Testbed:
    """The testbed of `hosts` dilated by `factor` (1: as asked). Without netem, each host's peer
    holds what it sends for the delay of `default` (dilated): a peer delays all it sends alike,
    so a link with a delay of its own gets the default's, and a warning says so."""
    dilation = Dilation(factor)
    warnings: list[str] = []
    delays = dict.fromkeys(hosts, 0.0)
    if not netem:
        base = _delay_of(default)
        delays = dict.fromkeys(hosts, dilation.delay_ms(base))
        for pair, options in sorted(links.items(), key=lambda item: sorted(item[0])):
            if _delay_of(options) != base:
                name = "-".join(sorted(pair))
                warnings.append(f"{name}: delay {_delay_of(options):g} ms emulated as the default's {base:g} ms")
    return Testbed(
        default=dilation.link(default),
        links={pair: dilation.link(options) for pair, options in links.items()},
        slowdown={host: dilation.slowdown(slowdown.get(host, 1.0)) for host in hosts},
        delay_ms=delays,
        warnings=tuple(warnings),
    )
