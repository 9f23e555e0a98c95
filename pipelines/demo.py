"""``make demo``: watch changes stream out of a live PostgreSQL, then check nothing was lost.

Starts a throwaway PostgreSQL 15 with logical replication, creates a small shop schema with
seed rows, writes random transactions for ``--seconds`` while ``pipelines.cdc`` snapshots and
streams every change into ``jsonl:demo-out`` with a live progress line, and finally replays the
files by key and compares them with the tables.  Run from a source checkout (it borrows the test
harness's throwaway server)::

    python -m pipelines.demo --seconds 20 --out demo-out
"""
from __future__ import annotations

import argparse
import random
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import Any

from pipelines import cdc

_MARK = '.changebeam-demo'  # in an --out directory the demo made (and may empty again)

_SCHEMA = """
CREATE TABLE customers (
    id serial PRIMARY KEY, name text NOT NULL, email varchar(120), vip boolean DEFAULT false,
    balance numeric(12, 2) DEFAULT 0, created timestamptz DEFAULT now(), born date);
CREATE TABLE orders (
    id bigserial PRIMARY KEY, customer_id int, items jsonb, tags text[], total numeric,
    placed timestamp DEFAULT localtimestamp, ref uuid DEFAULT gen_random_uuid(),
    weight double precision, note text, status varchar(20) DEFAULT 'new');
CREATE TABLE audit (at timestamptz DEFAULT now(), what text, amount real);
ALTER TABLE audit REPLICA IDENTITY FULL;
INSERT INTO customers (name, email, balance, born)
    SELECT 'customer ' || g, 'c' || g || '@example.com', g * 3.25, DATE '1970-01-01' + g
    FROM generate_series(1, 200) g;
INSERT INTO orders (customer_id, items, tags, total, weight, note)
    SELECT 1 + g % 200, jsonb_build_object('sku', g, 'qty', g % 5), ARRAY['seed', 'g' || g],
           g * 1.1, g / 7.0, repeat('x', 10) FROM generate_series(1, 500) g;
"""


def _traffic(dsn: str, seconds: float, stop: threading.Event, counts: dict[str, int]) -> None:
    import psycopg

    rng = random.Random(7)
    deadline = time.monotonic() + seconds
    with psycopg.connect(dsn) as conn:
        while time.monotonic() < deadline and not stop.is_set():
            with conn.transaction():
                for _ in range(rng.randint(1, 5)):
                    choice = rng.random()
                    if choice < 0.35:
                        big = 'long note ' * rng.choice([1, 1, 1, 900])  # sometimes TOASTed
                        conn.execute(
                            'INSERT INTO orders (customer_id, items, tags, total, weight, note) '
                            'VALUES (%s, %s, %s, %s, %s, %s)',
                            (rng.randint(1, 200), f'{{"sku": {rng.randint(1, 99)}, "gift": null}}',
                             ['web', None] if rng.random() < 0.2 else ['app'],
                             round(rng.uniform(1, 999), 3), rng.choice([0.5, float('nan')]), big))
                    elif choice < 0.65:
                        conn.execute("UPDATE orders SET status = %s WHERE id = "
                                     "(SELECT id FROM orders ORDER BY random() LIMIT 1)",
                                     (rng.choice(['paid', 'shipped', 'returned']),))
                    elif choice < 0.8:
                        conn.execute('UPDATE customers SET balance = balance + %s, vip = %s '
                                     'WHERE id = %s', (rng.randint(-50, 50), rng.random() < 0.1,
                                                       rng.randint(1, 200)))
                    elif choice < 0.9:
                        conn.execute('DELETE FROM orders WHERE id = '
                                     '(SELECT id FROM orders ORDER BY random() LIMIT 1)')
                    else:
                        conn.execute('INSERT INTO audit (what, amount) VALUES (%s, %s)',
                                     (rng.choice(['login', 'refund']), rng.uniform(0, 9)))
                    counts['statements'] += 1
            counts['transactions'] += 1
            time.sleep(rng.uniform(0.002, 0.02))


def _verify(dsn: str, out: str) -> bool:
    import psycopg

    from tests.replay import apply_envelopes, read_jsonl_dir, source_rows, table_state
    from transforms.sources.postgres.catalog import primary_key, resolve_tables
    from transforms.sources.postgres.changes import ChangeAssembler
    from transforms.sources.postgres.snapshot import relation_from_catalog

    ok = True
    with psycopg.connect(dsn, autocommit=True) as conn:
        assembler = ChangeAssembler('demo', 'demo', lambda oid: primary_key(conn, oid),
                                    lambda oids: {})
        schemas = {}
        for ref in resolve_tables(conn, ()):
            table = assembler.relation(relation_from_catalog(conn, ref)).schema
            if ref.has_primary_key:
                schemas[table.name] = table
        docs = read_jsonl_dir(out)
        state = apply_envelopes([d for d in docs if d['source']['table'] != 'audit'],
                                {name: t.key for name, t in schemas.items()})
        for name, table in schemas.items():
            expected = source_rows(conn, table)
            got = table_state(state.get(name, {}), table)
            same = expected == got
            ok &= same
            print(f'  {name}: {len(expected)} rows in the table, {len(got)} rebuilt from '
                  f'changes: {"identical" if same else "DIFFERENT"}', file=sys.stderr)
    print(f'  {len(docs):,} change events in {out}/', file=sys.stderr)
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog='python -m pipelines.demo', description=__doc__)
    parser.add_argument('--seconds', type=float, default=15.0,
                        help='How long to generate traffic (default 15).')
    parser.add_argument('--out', default='demo-out', help='Sink directory (default demo-out).')
    args = parser.parse_args(argv)

    try:
        from tests.services.postgres import PostgresServer
    except ImportError:  # an installed package: the test harness is not part of it
        parser.exit(2, f'{parser.prog}: error: the demo runs from a source checkout (make '
                       'demo): it borrows the test harness (tests/) to start a throwaway '
                       'PostgreSQL\n')

    from tests.services import ServiceError

    out = Path(args.out)
    if out.exists() and not (out / _MARK).exists() and \
            (not out.is_dir() or any(out.iterdir())):
        # Only a directory an earlier demo made is emptied: --out . must not cost a checkout.
        parser.exit(2, f'{parser.prog}: error: --out {args.out!r} holds files the demo did not '
                       'write: name a new or empty directory\n')
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    (out / _MARK).write_text('written by python -m pipelines.demo, which empties it again\n')
    print('starting a throwaway PostgreSQL 15 (wal_level=logical) …', file=sys.stderr)
    try:
        server = PostgresServer.start()
    except ServiceError as exc:  # the server package missing, or a server that did not start
        parser.exit(1, f'{parser.prog}: error: {exc}\n')
    stop = threading.Event()
    counts: dict[str, Any] = {'transactions': 0, 'statements': 0}
    try:
        database = server.create_database('shop')
        dsn = server.dsn(database)
        with server.connect(database) as conn:
            conn.execute(_SCHEMA)
        print(f'source {dsn}\nwriting random transactions for {args.seconds:.0f} s while '
              f'changes stream into jsonl:{args.out} …', file=sys.stderr)
        writer = threading.Thread(target=_traffic, args=(dsn, args.seconds, stop, counts),
                                  daemon=True)
        writer.start()
        status = cdc.main(['--source', dsn, '--sink', f'jsonl:{args.out}',
                           '--max_idle_secs', '3', '--heartbeat_secs', '1', '--progress', 'on'])
        stop.set()
        writer.join()
        print(f'traffic: {counts["transactions"]:,} transactions, {counts["statements"]:,} '
              'statements', file=sys.stderr)
        same = _verify(dsn, args.out)
        print('demo: every committed change arrived' if same else
              'demo: MISMATCH between source and changes', file=sys.stderr)
        return status if same else 1
    finally:
        stop.set()
        server.stop()


if __name__ == '__main__':
    sys.exit(main())
