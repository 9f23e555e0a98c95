"""The restriction every streaming source reads over: one unsplittable, unbounded range.

A replication slot or a binlog dump is one ordered stream: it cannot be read from two places at
once, so the range of positions is never split up front, and on drain reading simply stops::

    tracker=beam.DoFn.RestrictionParam(StreamRestrictionProvider(END))
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from apache_beam.io.restriction_trackers import OffsetRange, OffsetRestrictionTracker
from apache_beam.transforms.core import RestrictionProvider

__all__ = ['StreamRestrictionProvider']


class StreamRestrictionProvider(RestrictionProvider):
    """``[0, end)`` of a source's integer positions (LSNs, encoded binlog positions)."""

    def __init__(self, end: int) -> None:
        self._end = end

    def initial_restriction(self, element: Any) -> OffsetRange:
        return OffsetRange(0, self._end)

    def create_tracker(self, restriction: OffsetRange) -> OffsetRestrictionTracker:
        return OffsetRestrictionTracker(restriction)

    def restriction_size(self, element: Any, restriction: OffsetRange) -> int:
        return restriction.size()

    def split(self, element: Any, restriction: OffsetRange) -> Iterator[OffsetRange]:
        yield restriction  # one stream per source: never split up front

    def truncate(self, element: Any, restriction: OffsetRange) -> None:
        return None  # on drain, stop reading
