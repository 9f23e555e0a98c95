"""GTID positions of MariaDB and MySQL: parse, advance on commit, print back.

A resume position must name *every* transaction already applied, in the form the server takes
back when a replica connects:

* MariaDB: one last GTID per replication domain, ``domain-server-seq`` comma-separated
  (``0-1-120,1-7-15``), as in ``@@gtid_binlog_pos``; given to ``@slave_connect_state``.
* MySQL: a GTID set, ``uuid:interval[:interval]`` comma-separated (``3e11fa47-…:1-120:125``),
  as in ``@@gtid_executed``; sent encoded in COM_BINLOG_DUMP_GTID.

::

    state = MariaGtidState.parse('0-1-5')
    state.add('0-1-6'); str(state)           # '0-1-6'
    gset = MySqlGtidSet.parse('3e11fa47-71ca-11e1-9e33-c80aa9429562:1-5')
    gset.add('3e11fa47-71ca-11e1-9e33-c80aa9429562:6'); str(gset)   # '…:1-6'
"""
from __future__ import annotations

import struct
import uuid

__all__ = ['GtidError', 'MariaGtidState', 'MySqlGtidSet']


class GtidError(ValueError):
    """A GTID or GTID set text that does not parse; the message shows it."""


class MariaGtidState:
    """MariaDB's replication state: the last GTID of each domain."""

    def __init__(self) -> None:
        self._domains: dict[int, str] = {}  # domain -> its last GTID
        self._text: str | None = ''

    @classmethod
    def parse(cls, text: str) -> MariaGtidState:
        state = cls()
        for part in filter(None, (p.strip() for p in text.split(','))):
            state.add(part)
        return state

    def add(self, gtid: str) -> None:
        """Records ``domain-server-seq`` as the latest transaction of its domain."""
        try:
            domain, server_id, seq_no = (int(x) for x in gtid.split('-'))
        except ValueError:
            raise GtidError(f'{gtid!r} is not a MariaDB GTID (domain-server-seq)') from None
        self.advance(domain, server_id, seq_no)

    def advance(self, domain: int, server_id: int, seq_no: int, text: str | None = None) -> None:
        """Records a committed transaction; ``text`` is its GTID text when already at hand
        (this runs once per transaction, so it avoids re-formatting)."""
        self._domains[domain] = text or f'{domain}-{server_id}-{seq_no}'
        self._text = None

    def __str__(self) -> str:
        if self._text is None:
            domains = self._domains
            self._text = (next(iter(domains.values())) if len(domains) == 1
                          else ','.join(domains[d] for d in sorted(domains)))
        return self._text

    def __bool__(self) -> bool:
        return bool(self._domains)


class MySqlGtidSet:
    """MySQL's set of executed GTIDs: closed intervals of transaction numbers per server uuid."""

    def __init__(self) -> None:
        self._sets: dict[uuid.UUID, list[list[int]]] = {}

    @classmethod
    def parse(cls, text: str) -> MySqlGtidSet:
        gset = cls()
        for part in filter(None, (p.strip() for p in text.replace('\n', '').split(','))):
            sid_text, *intervals = part.split(':')
            try:
                sid = uuid.UUID(sid_text)
                for interval in intervals:
                    first, _, last = interval.partition('-')
                    gset._add_range(sid, int(first), int(last or first))
            except ValueError:
                raise GtidError(f'{part!r} is not a MySQL GTID set (uuid:1-5:7)') from None
        return gset

    def add(self, gtid: str) -> None:
        """Adds one ``uuid:number``."""
        sid_text, _, number = gtid.rpartition(':')
        try:
            self._add_range(uuid.UUID(sid_text), int(number), int(number))
        except ValueError:
            raise GtidError(f'{gtid!r} is not a MySQL GTID (uuid:number)') from None

    def _add_range(self, sid: uuid.UUID, first: int, last: int) -> None:
        if first < 1 or last < first:
            raise ValueError(f'bad interval {first}-{last}')
        intervals = self._sets.setdefault(sid, [])
        # Transactions arrive in order, so the new range almost always extends the last one.
        if intervals and intervals[-1][0] <= first <= intervals[-1][1] + 1:
            intervals[-1][1] = max(intervals[-1][1], last)
            return
        intervals.append([first, last])
        intervals.sort()
        merged = [intervals[0]]
        for start, end in intervals[1:]:
            if start <= merged[-1][1] + 1:
                merged[-1][1] = max(merged[-1][1], end)
            else:
                merged.append([start, end])
        self._sets[sid] = merged

    def __str__(self) -> str:
        parts = []
        for sid in sorted(self._sets, key=str):
            ranges = (str(a) if a == b else f'{a}-{b}' for a, b in self._sets[sid])
            parts.append(':'.join([str(sid), *ranges]))
        return ','.join(parts)

    def __bool__(self) -> bool:
        return bool(self._sets)

    def encode(self) -> bytes:
        """The binary form COM_BINLOG_DUMP_GTID carries: sid count, then per sid its 16 bytes,
        interval count and [first, last + 1) pairs, all little-endian 8-byte integers."""
        out = [struct.pack('<Q', len(self._sets))]
        for sid, intervals in self._sets.items():
            out.append(sid.bytes + struct.pack('<Q', len(intervals)))
            out.extend(struct.pack('<qq', a, b + 1) for a, b in intervals)
        return b''.join(out)
