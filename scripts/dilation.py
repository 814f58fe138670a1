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


def contention_error(factor: float, slowdowns: list[float], cores: int, threads: int) -> float:
    """The largest share of a host's time that sharing the cores adds, on average.

    Host j computes for real 1/(s_j x D) of its time (s_j its device's slowdown), sleeping the
    rest of its stretch. While host i computes, each other host j is computing too with that
    probability, and then the two share the cores: i's real compute takes k = (2 x threads) /
    cores times as long (at least 1). The stretch multiplies the time a pass took, lost time
    included (`Shard.run_batch`), so i's time grows by the share sum_j (k - 1) / (s_j x D): it
    falls as 1/D, and the hosts that dilation slows least weigh most."""
    if factor < 1 or min(cores, threads) < 1 or min(slowdowns, default=0) <= 0:
        raise ValueError("a factor of at least 1, cores and threads at least 1, slowdowns positive")
    extra = max(1.0, 2 * threads / cores) - 1
    duty = [1 / (s * factor) for s in slowdowns]
    return max((extra * (sum(duty) - own) for own in duty), default=0.0)


def choose_factor(slowdowns: list[float], cores: int, threads: int, tolerance: float = 0.05, limit: int = 64) -> float:
    """The smallest whole D (at most `limit`) whose `contention_error` is within `tolerance`."""
    if tolerance <= 0:
        raise ValueError("a positive tolerance")
    for factor in range(1, limit + 1):
        if contention_error(float(factor), slowdowns, cores, threads) <= tolerance:
            return float(factor)
    return float(limit)


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
