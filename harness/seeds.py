"""The seed-list syntax of --seeds and bench.toml: parsed (with the limits) and written back."""
from __future__ import annotations

from collections.abc import Iterable

from worldmodel.errors import WorldbenchError

MAX_SEEDS = 10_000  # a comparison trains a run per seed: more is a typo, not a plan
MAX_SEED = 2**32 - 1  # numpy and torch seeds must fit


def seeds_option(text: str | None, default: list[int] | None, where: str = "--seeds") -> list[int] | None:
    """A --seeds style option: its seeds, or `default` when it was not given ("" is given: an error, not a default)."""
    return default if text is None else parse_seeds(text, where)


def parse_seeds(seeds: str | list, where: str = "--seeds") -> list[int]:
    """'0-4' -> [0..4], '0,3' -> [0, 3], [1, 2] -> [1, 2]: at most MAX_SEEDS seeds, each in [0, MAX_SEED],
    whether they come from the command line or from bench.toml."""
    ranges = _seed_ranges(seeds, where)
    count, highest = sum(high - low + 1 for low, high in ranges), max(high for _, high in ranges)
    if count > MAX_SEEDS or highest > MAX_SEED:
        given = f"{seeds!r} " if isinstance(seeds, str) else ""
        raise WorldbenchError(f"{where}: {given}asks for {count:,} seeds up to {highest}; "
                              f"at most {MAX_SEEDS:,} seeds, each <= {MAX_SEED}")
    return list(dict.fromkeys(seed for low, high in ranges for seed in range(low, high + 1)))


def _seed_ranges(seeds: str | list, where: str) -> list[tuple[int, int]]:
    """The (low, high) ranges a seed list names, not yet expanded (a typo may ask for billions)."""
    if isinstance(seeds, list):
        if not seeds or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds):
            raise WorldbenchError(f"{where}: expected a non-empty list of seeds >= 0, got {repr(seeds)[:80]}")
        return [(seed, seed) for seed in seeds]
    if not str(seeds).strip():
        raise WorldbenchError(f"{where}: empty seed list; use a range like 0-4 or a list like 0,3")
    ranges = []
    for part in str(seeds).split(","):
        try:
            low, dash, high = part.strip().partition("-")
            low, high = int(low), int(high) if dash else int(low)
            if not 0 <= low <= high:
                raise ValueError
        except ValueError:
            raise WorldbenchError(
                f"{where}: {seeds!r} is not a seed list; use a range like 0-4 (low <= high) or a list like 0,3"
            ) from None
        ranges.append((low, high))
    return ranges


def format_seeds(seeds: Iterable[int]) -> str:
    """The inverse of parse_seeds, for labels and messages: [0, 1, 2, 3, 7] -> "0-3,7" (a valid --seeds value);
    "" for no seeds."""
    ordered = sorted(set(seeds))
    parts, start = [], 0
    for end in range(len(ordered)):
        if end + 1 < len(ordered) and ordered[end + 1] == ordered[end] + 1:
            continue
        run = ordered[start:end + 1]
        parts += [f"{run[0]}-{run[-1]}"] if len(run) > 2 else [str(seed) for seed in run]
        start = end + 1
    return ",".join(parts)
