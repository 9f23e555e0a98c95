"""A full disk under a file sink: one line naming the file, nothing lost after a restart.

What a user checks: when the disk a ``jsonl:`` sink writes to fills up, the pipeline stops
with one line (not a traceback, nor a second error from cleaning up hiding the first), no
partial file is left under a final name, nothing unwritten is confirmed to the slot, and once
there is room again a restart delivers every row.  The disk is a small tmpfs (the tests run as
root, as CI does: a machine where mounting fails fails this test, it does not skip it).
"""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.integration.test_postgres_source import start_cdc
from tests.replay import read_jsonl_dir

pytestmark = pytest.mark.integration


def _mount(directory: Path, size: str, *, remount: bool = False) -> None:
    options = f'remount,size={size}' if remount else f'size={size}'
    subprocess.run(['mount', '-t', 'tmpfs', '-o', options, 'tmpfs', str(directory)],
                   check=True, capture_output=True)


def test_a_full_disk_stops_the_pipeline_in_one_line_and_a_restart_loses_nothing(
        pg_db, tmp_path: Path) -> None:
    with pg_db.connect() as conn:
        conn.execute('CREATE TABLE public.t (id integer PRIMARY KEY, v text)')
        conn.execute("INSERT INTO public.t SELECT g, repeat('x', 200) FROM "
                     'generate_series(1, 5000) AS g')  # ~1.5 MB of JSON lines
    disk = tmp_path / 'disk'
    disk.mkdir()
    _mount(disk, '256k')
    try:
        process = start_cdc(pg_db.dsn, disk / 'out', '--tables', 'public.t',
                            '--max_idle_secs', '2')
        output, _ = process.communicate(timeout=120)
        assert process.returncode == 1, output[-3000:]
        last = output.strip().splitlines()[-1]
        assert last.startswith('python -m pipelines.cdc: error: No space left on device: '
                               f'{disk / "out" / "public.t"}/.part-'), output[-3000:]
        assert 'Traceback' not in output, output[-3000:]
        # Whatever was renamed into place is whole: every line parses.
        early = read_jsonl_dir(str(disk / 'out'))
        assert len(early) < 5000

        _mount(disk, '64m', remount=True)
        process = start_cdc(pg_db.dsn, disk / 'out', '--tables', 'public.t',
                            '--max_idle_secs', '2')
        output, _ = process.communicate(timeout=120)
        assert process.returncode == 0, output[-3000:]
        events = read_jsonl_dir(str(disk / 'out'))
    finally:
        subprocess.run(['umount', str(disk)], check=False)
    rows = {e['after']['id'] for e in events if e['op'] == 'r'}
    assert rows == set(range(1, 5001))
