"""Which rank encodes which media item of a step (parallel/modality_decoupled.py; the plan's
schedule simulation uses the same split). A pure function of the items' costs, so every rank of
a replica computes the same assignment without exchanging anything."""
from __future__ import annotations


def balance(costs: list[float], ways: int) -> list[int]:
    """The owner (0..ways-1) of each item: largest cost first, each to the way with the least
    cost so far (ties: fewer items, then the lower way). No way ends above the mean load by more
    than the largest single cost; equal costs split within one item of even."""
    load, count, owner = [0.0] * ways, [0] * ways, [0] * len(costs)
    for i in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        way = min(range(ways), key=lambda r: (load[r], count[r], r))
        owner[i] = way
        load[way] += costs[i]
        count[way] += 1
    return owner
