"""How a streaming source walks its positions: one unsplittable, unbounded range, in rounds.

A replication slot or a binlog dump is one ordered stream: it cannot be read from two places at
once, so the range of positions is never split up front, and on drain reading simply stops.
:class:`StreamReadFn` is the round structure both database sources share::

    @beam.DoFn.unbounded_per_element()
    class _ReadSlotFn(StreamReadFn):
        def _open(self): ...            # connections
        def _begin(self, start, tracker, finalizer): ...   # slot, snapshot; sets self._stream
        def _reconnect(self, start): ...                    # stream positioned elsewhere
        def _stream_round(self, tracker, finalizer, watermark): ...
"""
from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import apache_beam as beam
from apache_beam.io.restriction_trackers import OffsetRange, OffsetRestrictionTracker
from apache_beam.io.watermark_estimators import ManualWatermarkEstimator
from apache_beam.transforms.core import RestrictionProvider

__all__ = ['END', 'STOP', 'SourceUnavailable', 'StreamReadFn', 'StreamRestrictionProvider',
           'end_bundles_promptly', 'snapshot_broke']

_LOG = logging.getLogger(__name__)

RECONNECT_SECS = 300.0
"""How long a streaming source keeps trying to reconnect after its connection broke."""
_FIRST_RETRY_S = 0.5
_LONGEST_RETRY_S = 10.0

END = (1 << 63) - 1
"""The end of every source's position range (the largest int64 Beam's OffsetRange holds)."""

STOP = threading.Event()
"""Set (by ``pipelines.cdc`` on SIGTERM or SIGINT) to stop every source of this process at the
end of its current round, as ``--max_idle_secs`` does: what was read is written and confirmed,
nothing more is read.  Only runners that run the sources in this process (DirectRunner) see
it; on Dataflow or Flink, draining the job is the runner's business."""


SAMPLING_PERIOD_MS = 5
"""The longest sleep of Beam's state-sampler thread in this process (Beam's default: 200)."""


def end_bundles_promptly() -> None:
    """Make bundles run in this process end without waiting for Beam's state sampler.

    Every bundle ends by joining the thread that samples which step is running, and that
    thread sleeps in periods growing from 2 to 200 ms: a round of a streaming source (a bundle
    of 0.15 s) waited ~20 ms for it (measured), a catching-up round of 1 s up to ~190 ms, with
    nothing read meanwhile.  With 5 ms periods the wait is a few milliseconds; the sampler
    thread wakes more often (without the GIL) and the step timings are finer.  Affects the
    bundle processors created after the call in this process: the local runner's.  Dataflow's
    and Flink's workers keep their own setting.  Leaves Beam alone if its default is not the
    one this was written against.
    """
    from apache_beam.runners.worker import statesampler

    init = statesampler.StateSampler.__init__
    if init.__defaults__ == (statesampler.DEFAULT_SAMPLING_PERIOD_MS,):
        init.__defaults__ = (SAMPLING_PERIOD_MS,)


class SourceUnavailable(ConnectionError):
    """The source's server stayed unreachable for longer than the source waits for it, or
    went away during a snapshot (which is taken again, not resumed)."""


def snapshot_broke(exc: BaseException) -> SourceUnavailable:
    """A snapshot's connection broke (the source restarted, the network): the driver's bare
    "connection lost" said neither which side nor what to do."""
    return SourceUnavailable(
        f'the snapshot: the connection to the source broke ({" ".join(str(exc).split())}); '
        'run again once it is back: the snapshot is taken again (none of it was confirmed)')


class StreamRestrictionProvider(RestrictionProvider):
    """``[0, end)`` of a source's integer positions (LSNs, encoded binlog positions)."""

    def __init__(self, end: int = END) -> None:
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


class StreamReadFn(beam.DoFn):
    """Rounds of a streaming source: the first sets up (and may snapshot), later ones read.

    Subclasses set ``self._control``, ``self._stream`` (None until streaming) and
    ``self._resync`` (the stream read past the restriction it was handed) and implement the
    four hooks.  A round whose connection broke calls ``_connection_lost``; the next rounds
    call ``_reconnect`` (one attempt each, with growing pauses) until it works, for up to
    ``reconnect_secs``, and ``_transient`` says which failures are worth waiting out.  The
    BundleFinalizerParam comes before the restriction and watermark parameters, as the local
    runner requires.
    """

    _control: Any = None
    _stream: Any = None
    _resync: bool = False
    _lost_since: float | None = None  # when the connection broke; None while connected
    _retry_in: float = _FIRST_RETRY_S
    reconnect_secs: float = RECONNECT_SECS

    def process(self, element: Any,
                finalizer=beam.DoFn.BundleFinalizerParam,
                tracker=beam.DoFn.RestrictionParam(StreamRestrictionProvider()),
                watermark=beam.DoFn.WatermarkEstimatorParam(
                    ManualWatermarkEstimator.default_provider()),
                ) -> Iterator[Any]:
        if self._control is None:
            self._open()
            # Everything alive now (Beam's worker, modules, this DoFn) lives until the end: move
            # it out of the collector's sight.  Otherwise each full collection walks that heap,
            # about 150 ms a time, for a quarter of the CPU time of a busy stream.
            gc.freeze()
        start = tracker.current_restriction().start
        if self._stream is None:
            yield from self._begin(start, tracker, finalizer)
            if self._stream is None:  # snapshot only: nothing streams
                tracker.try_claim(END - 1)
                return
            tracker.defer_remainder()
            return
        if self._resync and not self._reconnected(start):
            if STOP.is_set():
                _LOG.info('stop requested while the source is unreachable: stopping')
                tracker.try_claim(END - 1)
                return
            tracker.defer_remainder()  # try again next round
            return
        yield from self._stream_round(tracker, finalizer, watermark)

    def _connection_lost(self, exc: BaseException) -> None:
        """The round's reading broke off: reconnect at the start of the next round."""
        if self._lost_since is None:
            self._lost_since = time.monotonic()
            self._retry_in = _FIRST_RETRY_S
        _LOG.warning('%s; reconnecting', exc)
        self._resync = True

    def _reconnected(self, start: int) -> bool:
        """``_reconnect``, retried with growing pauses (one attempt a round) for up to
        ``reconnect_secs`` after the connection broke; errors that are not about reaching the
        server (``_transient``) are raised at once."""
        try:
            self._reconnect(start)
        except Exception as exc:
            if not self._transient(exc):
                raise
            now = time.monotonic()
            lost_since = self._lost_since = self._lost_since or now
            if now - lost_since >= self.reconnect_secs:
                raise SourceUnavailable(
                    f'the source has been unreachable for {now - lost_since:.0f} s ({exc}); '
                    'restart the pipeline once it is back: it resumes from the last confirmed '
                    'position') from exc
            _LOG.warning('cannot reconnect yet (%s); next attempt in %.1f s',
                         ' '.join(str(exc).split()), self._retry_in)
            STOP.wait(self._retry_in)
            self._retry_in = min(self._retry_in * 2, _LONGEST_RETRY_S)
            return False
        if self._lost_since is not None:
            _LOG.info('reconnected after %.1f s', time.monotonic() - self._lost_since)
        self._lost_since = None
        return True

    def _transient(self, exc: BaseException) -> bool:
        """Whether reconnecting may succeed later (the server is restarting, unreachable)."""
        return False

    def _open(self) -> None:
        raise NotImplementedError

    def _begin(self, start: int, tracker: Any, finalizer: Any) -> Iterator[Any]:
        raise NotImplementedError

    def _reconnect(self, start: int) -> None:
        raise NotImplementedError

    def _stream_round(self, tracker: Any, finalizer: Any, watermark: Any) -> Iterator[Any]:
        raise NotImplementedError
