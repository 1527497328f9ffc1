"""Inclusive integer ranges [first, last], the currency of the gap check."""

from typing import Iterable, List, Sequence, Tuple

Range = Tuple[int, int]


def merge(ranges: Iterable[Sequence[int]]) -> List[Range]:
    """Sorted, disjoint, non-adjacent ranges covering exactly the same integers."""
    out: List[List[int]] = []
    for first, last in sorted((int(r[0]), int(r[1])) for r in ranges):
        if out and first <= out[-1][1] + 1:
            out[-1][1] = max(out[-1][1], last)
        else:
            out.append([first, last])
    return [(a, b) for a, b in out]


def subtract(span: Range, ranges: Iterable[Sequence[int]]) -> List[Range]:
    """The integers of `span` that none of `ranges` covers, as merged ranges."""
    lo, hi = span
    missing: List[Range] = []
    cursor = lo
    for first, last in merge(ranges):
        if last < cursor:
            continue
        if first > hi:
            break
        if first > cursor:
            missing.append((cursor, first - 1))
        cursor = max(cursor, last + 1)
    if cursor <= hi:
        missing.append((cursor, hi))
    return missing


def size(ranges: Iterable[Sequence[int]]) -> int:
    """How many integers the (merged) ranges hold."""
    return sum(b - a + 1 for a, b in merge(ranges))


def text(ranges: Iterable[Sequence[int]], limit: int = 0) -> str:
    """'1-5, 9, 12-20' (or 'none'). With a limit, at most that many ranges and then how many
    more, e.g. '1-5, 9 and 1,498 more ranges (2,950 seqs)': a report line an operator can read
    when a run of I/O errors gave up thousands of short ranges (the JSON keeps them all)."""
    ranges = list(ranges)
    shown = ranges[:limit] if 0 < limit < len(ranges) else ranges
    parts = [f"{a}" if a == b else f"{a}-{b}" for a, b in shown]
    if not parts:
        return "none"
    out = ", ".join(parts)
    rest = ranges[len(shown):]
    if rest:
        out += f" and {len(rest):,} more ranges ({size(rest):,} seqs)"
    return out
