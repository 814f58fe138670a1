"""Exact plan search: A* over (units covered, last class, first class, devices used per class).

Theory of operation. A plan is a path: each step puts units [i, j) on one more device. The
paper's DP keys its table on (unit, device) alone, so it cannot tell whether a device was
already used or how much memory is left: with memory limits it is a heuristic. Here the state
also carries how many devices of each class (see `classes`) are used, which makes the
one-stage-per-device rule exact, and best-first search keeps the exponential state space from
being built: the paper-style DP, relaxed (devices reusable), is computed backwards and serves as
an admissible heuristic, so the search follows it straight to the goal whenever the relaxed
optimum happens to use every device at most once, and only branches where memory or the
one-stage rule bites.

Two cost algebras share the code: "sum" (per-token latency) and "max" (pipeline bottleneck).
`cap` bounds every stage and transfer; throughput uses it to minimise latency among the plans
of optimal bottleneck, so its plans are not needlessly slow per token.
Costs are integer ns (see `costs`); ties are broken by a deterministic insertion order.
"""

from __future__ import annotations

import heapq
from bisect import bisect_left, bisect_right
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from .classes import DeviceClass
from .costs import CostModel

Algebra = Literal["sum", "max"]
INFINITY = 1 << 62


@dataclass(frozen=True)
class Segment:
    """Units [start, end) on one device of class `cls`, in its form number `variant`."""

    cls: int
    start: int
    end: int
    variant: int = 0


@dataclass(frozen=True)
class SearchResult:
    """The optimal cost and its segments, or no plan."""

    cost: int
    segments: tuple[Segment, ...]
    expanded: int


# State key: (position, last class, first class, counts per class).
StateKey = tuple[int, int, int, tuple[int, ...]]


class _Tables:
    """Per-class tables the search and its heuristic read."""

    def __init__(self, costs: CostModel, classes: list[DeviceClass], cap: int | None) -> None:
        self.costs = costs
        self.classes = classes
        self.units = costs.unit_count
        self.cap = INFINITY if cap is None else cap
        self.memory = [costs.memory[c.representative] for c in classes]
        self.sizes = [c.size for c in classes]
        # stage[c][i][j]: ns of units [i, j) on a class-c device in its fastest form that holds
        # them within the cap (INFINITY: none does), and variant[c][i][j] that form.
        # max_end[c][i]: the furthest end of a stage of class c starting at unit i (i: none).
        self.stage: list[list[list[int]]] = []
        self.variant: list[list[list[int]]] = []
        self.max_end: list[list[int]] = []
        for k in range(len(classes)):
            self._stage_table(k)
        self._hops: dict[tuple[int, int, int], int] = {}
        # window_min[c][m-1]: the least compute of any m consecutive units a class-c device holds.
        self.window_min = [self._window_minima(k) for k in range(len(classes))]
        self.thresholds = sorted({t for table in self.window_min for t in table})
        self._counting: dict[tuple[int, tuple[int, ...]], int] = {}
        self._filling: dict[tuple[int, tuple[int, ...]], int] = {}
        # cheapest_unit[c][i]: the least time of any one unit in [i, U) on class c, in any form.
        self.cheapest_unit = []
        for k in range(len(classes)):
            table = [INFINITY] * (self.units + 1)
            variants = costs.variants[classes[k].representative]
            for i in range(self.units - 1, -1, -1):
                unit = min(v.compute_prefix[i + 1] - v.compute_prefix[i] for v in variants)
                table[i] = min(table[i + 1], unit)
            self.cheapest_unit.append(table)
        self.cheapest_hop = min(
            (
                costs.transfer(a.representative, b.members[0] if a is not b else b.members[1], n)
                for a in classes
                for b in classes
                if a is not b or b.size > 1
                for n in set(costs.out_bytes)
            ),
            default=0,
        )

    def filling_bound(self, position: int, counts: tuple[int, ...]) -> int:
        """Least latency to finish units [position, U) with the devices left.

        Each class-c device holds at most as many units as its longest fitting window and runs
        each of them in no less than its cheapest unit time: filling the cheapest devices first
        bounds the compute left. At least one more hop and the return follow.
        """
        key = (position, counts)
        if key not in self._filling:
            need = self.units - position
            order = sorted(
                (self.cheapest_unit[k][position], k)
                for k in range(len(self.sizes))
                if counts[k] < self.sizes[k] and self.window_min[k]
            )
            total = 2 * self.cheapest_hop
            for rate, k in order:
                take = min(need, (self.sizes[k] - counts[k]) * len(self.window_min[k]))
                total += take * rate
                need -= take
                if not need:
                    break
            self._filling[key] = total if not need else INFINITY
        return self._filling[key]

    def _stage_table(self, k: int) -> None:
        device, units = self.classes[k].representative, self.units
        stage = [[INFINITY] * (units + 1) for _ in range(units + 1)]
        variant = [[0] * (units + 1) for _ in range(units + 1)]
        ends = []
        for start in range(units):
            end = start
            while end < units:  # a longer stage fits no form once this one does not (times and sizes only grow)
                chosen = self.costs.choose(device, start, end + 1, self.cap)
                if chosen is None:
                    break
                end += 1
                stage[start][end] = self.costs.compute(device, start, end, chosen)
                variant[start][end] = chosen
            ends.append(end)
        self.stage.append(stage)
        self.variant.append(variant)
        self.max_end.append(ends)

    def _window_minima(self, k: int) -> list[int]:
        table, minima = self.stage[k], []
        for length in range(1, self.units + 1):
            fitting = [table[i][i + length] for i in range(self.units - length + 1) if table[i][i + length] < INFINITY]
            if not fitting:
                break
            minima.append(min(fitting))
        return minima

    def counting_bound(self, position: int, counts: tuple[int, ...]) -> int:
        """Least bottleneck with which the devices left could even hold units [position, U).

        A device of class c whose stages may take B ns holds at most m_c(B) units (the longest
        window it can run within B); the remaining devices must together hold what is left.
        """
        key = (position, counts)
        if key not in self._counting:
            need = self.units - position
            spare = [self.sizes[k] - counts[k] for k in range(len(self.sizes))]

            def enough(bound: int) -> bool:
                held = 0
                for k, table in enumerate(self.window_min):
                    if spare[k]:
                        held += spare[k] * bisect_right(table, bound)
                return held >= need

            low, high = 0, len(self.thresholds)
            while low < high:
                middle = (low + high) // 2
                if enough(self.thresholds[middle]):
                    high = middle
                else:
                    low = middle + 1
            self._counting[key] = self.thresholds[low] if low < len(self.thresholds) else INFINITY
        return self._counting[key]

    def hop(self, a: int, b: int, nbytes: int) -> int:
        """ns from a device of class a to another device of class b (INFINITY if over cap)."""
        key = (a, b, nbytes)
        if key not in self._hops:
            source = self.classes[a].representative
            members = self.classes[b].members
            target = members[0] if a != b else members[1]
            cost = self.costs.transfer(source, target, nbytes)
            self._hops[key] = cost if cost <= self.cap else INFINITY
        return self._hops[key]

    def can_follow(self, a: int, b: int) -> bool:
        """Whether some device of class b can follow one of class a."""
        return a != b or self.sizes[b] > 1


def _combine(algebra: Algebra) -> Callable[[int, int], int]:
    return (lambda x, y: x + y) if algebra == "sum" else max


def _heuristic(tables: _Tables, first: int, algebra: Algebra) -> list[list[int]]:
    """h[i][a]: the relaxed (devices reusable) optimum to finish from unit i after class a."""
    combine = _combine(algebra)
    units, count = tables.units, len(tables.classes)
    last_out = tables.costs.out_bytes[-1]
    h = [[INFINITY] * count for _ in range(units + 1)]
    for a in range(count):
        h[units][a] = 0 if a == first else tables.hop(a, first, last_out)
    for i in range(units - 1, 0, -1):
        inner = [INFINITY] * count
        for b in range(count):
            row, best = tables.stage[b][i], INFINITY
            for j in range(i + 1, tables.max_end[b][i] + 1):
                if h[j][b] < INFINITY:
                    best = min(best, combine(row[j], h[j][b]))
            inner[b] = best
        nbytes = tables.costs.out_bytes[i - 1]
        for a in range(count):
            best = INFINITY
            for b in range(count):
                if inner[b] < INFINITY and tables.can_follow(a, b):
                    hop = tables.hop(a, b, nbytes)
                    if hop < INFINITY:
                        best = min(best, combine(hop, inner[b]))
            h[i][a] = best
    return h


class SearchBudgetExceeded(Exception):
    """The search generated more states than its budget allows (counted, so deterministic)."""


def exact_search(
    costs: CostModel,
    classes: list[DeviceClass],
    algebra: Algebra,
    cap: int | None = None,
    budget: int | None = None,
) -> SearchResult | None:
    """The optimal plan as class segments, or None when no plan exists."""
    tables = _Tables(costs, classes, cap)
    combine = _combine(algebra)
    units, count = tables.units, len(classes)
    source_class = next((k for k, c in enumerate(classes) if costs.source in c.members), None)
    firsts = [source_class] if source_class is not None else list(range(count))
    heuristics = {first: _heuristic(tables, first, algebra) for first in firsts}
    # Memory prune: units [j, U) must fit in the devices still free; ends below this cannot.
    negative_suffix = [b - costs.bytes_prefix[-1] for b in costs.bytes_prefix]  # ascending
    last_out = costs.out_bytes[-1]

    best: dict[StateKey, int] = {}
    parent: dict[StateKey, tuple[StateKey | None, int, int]] = {}
    goals: dict[int, Segment] = {}  # sequence -> last segment, for complete plans in the heap
    # Heap entries: (priority, -position, sequence, g, key); the sequence breaks ties.
    heap: list[tuple[int, int, int, int, StateKey]] = []
    sequence = 0

    def free_memory(counts: tuple[int, ...]) -> int:
        return sum((tables.sizes[k] - counts[k]) * tables.memory[k] for k in range(count))

    def first_end(counts: tuple[int, ...]) -> int:
        return bisect_left(negative_suffix, -free_memory(counts))

    def push(g: int, key: StateKey, previous: StateKey | None, start: int) -> None:
        nonlocal sequence
        position, last, first, counts = key
        if position == units:
            ret = 0 if previous is None else tables.hop(last, first, last_out)
            if ret >= INFINITY:
                return
            total = combine(g, ret)
            goals[sequence] = Segment(last, start, position, tables.variant[last][start][position])
            # A goal's key is the state it was reached from; its own segment sits in `goals`.
            heapq.heappush(heap, (total, -position, sequence, total, previous or key))
        else:
            if best.get(key, INFINITY) <= g:
                return
            estimate = heuristics[first][position][last]
            if algebra == "max":
                estimate = max(estimate, tables.counting_bound(position, counts))
            else:
                estimate = max(estimate, tables.filling_bound(position, counts))
            if estimate >= INFINITY:
                return
            best[key] = g
            parent[key] = (previous, start, position)
            heapq.heappush(heap, (combine(g, estimate), -position, sequence, g, key))
        sequence += 1

    for first in firsts:
        counts = tuple(1 if k == first else 0 for k in range(count))
        row = tables.stage[first][0]
        for end in range(max(1, first_end(counts)), tables.max_end[first][0] + 1):
            push(row[end], (end, first, first, counts), None, 0)

    expanded = 0
    while heap:
        _, _, entry, g, key = heapq.heappop(heap)
        if entry in goals:
            last_segment = goals[entry]
            earlier = _segments(tables, parent, key) if last_segment.start > 0 else ()
            return SearchResult(g, (*earlier, last_segment), expanded)
        if best.get(key, INFINITY) < g:
            continue  # a cheaper path reached this state after this entry was pushed
        expanded += 1
        # States generated (pushed), not expanded: that is what the time goes into.
        if budget is not None and sequence > budget:
            raise SearchBudgetExceeded(sequence)
        position, last, first, counts = key
        nbytes = costs.out_bytes[position - 1]
        for b in range(count):
            if counts[b] >= tables.sizes[b] or not tables.can_follow(last, b):
                continue
            hop = tables.hop(last, b, nbytes)
            if hop >= INFINITY:
                continue
            after_hop = combine(g, hop)
            next_counts = (*counts[:b], counts[b] + 1, *counts[b + 1 :])
            row = tables.stage[b][position]
            lowest = max(position + 1, first_end(next_counts))
            for end in range(lowest, tables.max_end[b][position] + 1):
                push(combine(after_hop, row[end]), (end, b, first, next_counts), key, position)
    return None


def _segments(
    tables: _Tables, parent: dict[StateKey, tuple[StateKey | None, int, int]], key: StateKey
) -> tuple[Segment, ...]:
    segments: list[Segment] = []
    current: StateKey | None = key
    while current is not None:
        previous, start, end = parent[current]
        segments.append(Segment(current[1], start, end, tables.variant[current[1]][start][end]))
        current = previous
    return tuple(reversed(segments))
