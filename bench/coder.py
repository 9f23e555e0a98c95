"""ChangeEventCoder against Beam's default coders, on events shaped like real CDC traffic.

    python -m bench.coder [--events 50000]

The limit here is Beam's own choice for an untyped PCollection (FastPrimitivesCoder, which
pickles objects it does not know) and plain PickleCoder; printed: µs per encode+decode round
trip, encoded bytes per event, and the speed-up.
"""
from __future__ import annotations

import argparse
import datetime as dt
import time
from decimal import Decimal

import apache_beam as beam

from transforms.coders import ChangeEventCoder
from transforms.envelope import (
    ChangeEvent,
    Column,
    Kind,
    Op,
    SourcePosition,
    TableSchema,
    TransactionInfo,
)

TABLE = TableSchema('public', 'orders', (
    Column('id', Kind.INT64, 'bigint', False), Column('customer_id', Kind.INT32, 'integer'),
    Column('status', Kind.STRING, 'character varying(20)'),
    Column('total', Kind.DECIMAL, 'numeric(12,2)', precision=12, scale=2),
    Column('placed', Kind.TIMESTAMPTZ, 'timestamp with time zone'),
    Column('items', Kind.JSON, 'jsonb'), Column('tags', Kind.ARRAY, 'text[]', element=Kind.STRING),
    Column('weight', Kind.FLOAT64, 'double precision'), Column('note', Kind.TEXT, 'text'),
    Column('paid', Kind.BOOLEAN, 'boolean')), key=('id',))


def make_events(n: int) -> list[ChangeEvent]:
    base = dt.datetime(2026, 11, 21, 12, 0, tzinfo=dt.timezone.utc)
    events = []
    for i in range(n):
        after = {'id': i, 'customer_id': i % 997, 'status': 'paid', 'total': Decimal(i) / 4,
                 'placed': base + dt.timedelta(seconds=i), 'items': '{"sku": 1, "qty": 2}',
                 'tags': ['web', 'promo'], 'weight': i / 7, 'note': 'deliver after 5pm',
                 'paid': i % 2 == 0}
        events.append(ChangeEvent(
            op=Op.UPDATE if i % 3 else Op.CREATE, table=TABLE,
            source=SourcePosition('postgresql', 'shop', 'shop', 'public', 'orders',
                                  1_795_000_000_000 + i, tx_id=1000 + i // 5, lsn=10_000 + i * 80,
                                  commit_lsn=10_000 + (i // 5) * 400),
            before={'id': i} if i % 3 else None, after=after, ts_ms=1_795_000_000_500 + i,
            transaction=TransactionInfo(f'{1000 + i // 5}:{i // 5}', i % 5 + 1, i % 5 + 1)))
    return events


def measure(coder: beam.coders.Coder, events: list[ChangeEvent]) -> tuple[float, float]:
    impl = coder.get_impl()
    start = time.perf_counter()
    total = 0
    for event in events:
        data = impl.encode(event)
        total += len(data)
        impl.decode(data)
    elapsed = time.perf_counter() - start
    return elapsed / len(events) * 1e6, total / len(events)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('--events', type=int, default=50_000)
    args = parser.parse_args()
    events = make_events(args.events)
    ours = ChangeEventCoder()
    impl = ours.get_impl()
    assert all(impl.decode(impl.encode(e)) == e for e in events[:1000]), 'round trip broken'
    rows = [('ChangeEventCoder', *measure(ours, events))]
    for name, coder in (('FastPrimitivesCoder (Beam default)', beam.coders.FastPrimitivesCoder()),
                        ('PickleCoder', beam.coders.PickleCoder())):
        rows.append((name, *measure(coder, events)))
    print(f'{args.events:,} events of a 10-column table, encode + decode each')
    print(f'{"coder":<36}{"µs/event":>10}{"bytes/event":>13}{"speed-up":>10}')
    for name, micros, size in rows:
        print(f'{name:<36}{micros:>10.2f}{size:>13.0f}{micros / rows[0][1]:>9.2f}x')


if __name__ == '__main__':
    main()
