"""``python -m pipelines.cdc`` as a user runs it: help, and one clear line for a bad option.

Every case is a real subprocess started from the repository root; they start together (each
spends ~1.5 s of CPU importing Beam) and each test reads its own result.  Finer points of
validation are in test_options.py; these check what reaches the terminal.
"""
from __future__ import annotations

import argparse
import os
import pathlib
import subprocess
import sys
from collections.abc import Iterator

import pytest

from pipelines.options import CdcOptions

REPO = pathlib.Path(__file__).resolve().parents[2]
PROG = 'python -m pipelines.cdc'
PG = 'postgresql://cdc@db.invalid/shop'


def _cases(out: str) -> dict[str, list[str]]:
    sink = f'jsonl:{out}'
    return {
        'help': ['--help'],
        'bogus_source': ['--source', 'bogus://x', '--sink', sink],
        'bad_sink': ['--source', PG, '--sink', 'csv:out'],
        'bad_snapshot': ['--source', 'postgresql://u:topsecret@h/db', '--sink', sink,
                         '--snapshot', 'sometimes'],
        'bad_max_idle': ['--source', PG, '--sink', sink, '--max_idle_secs', 'soon'],
        'mysql': ['--source', 'mysql://u:topsecret@db.invalid/shop', '--sink',
                  f'jsonl:{out}-mysql', '--offset_store', f'{out}-mysql-offsets.json'],
        'avro_sink': ['--source', PG, '--sink', 'avro:ftp://files.invalid/lake'],
        'mistyped': ['--source', PG, '--sink', sink, '--tabels', 'public.orders'],
        'abbreviated': ['--source', PG, '--sink', sink, '--table', 'public.orders'],
        'mysql_sink_param': ['--source', PG, '--sink',
                             'mysql://u:topsecret@db.invalid/shop?sslmode=REQUIRED'],
    }


@pytest.fixture(scope='module')
def runs(tmp_path_factory: pytest.TempPathFactory
         ) -> Iterator[dict[str, subprocess.CompletedProcess[str]]]:
    out = tmp_path_factory.mktemp('cli') / 'out'
    env = {**os.environ, 'COLUMNS': '1000', 'PYTHONWARNINGS': 'ignore'}
    procs = {
        name: subprocess.Popen([sys.executable, '-m', 'pipelines.cdc', *argv], cwd=REPO,
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
        for name, argv in _cases(str(out)).items()
    }
    results = {}
    try:
        for name, proc in procs.items():
            stdout, stderr = proc.communicate(timeout=120)
            results[name] = subprocess.CompletedProcess(proc.args, proc.returncode, stdout,
                                                        stderr)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    yield results
    assert not out.exists(), 'a rejected command line must not create the sink directory'


def _one_error_line(result: subprocess.CompletedProcess[str], option: str) -> str:
    assert result.returncode == 2, result.stderr
    assert result.stdout == ''
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f'{PROG}: error: {option} '), lines[0]
    return lines[0]


def _cdc_options() -> list[tuple[str, str]]:
    parser = argparse.ArgumentParser()
    CdcOptions._add_argparse_args(parser)
    return [(action.option_strings[0], action.help or '') for action in parser._actions
            if action.option_strings and action.dest != 'help']


def test_help_lists_every_cdc_option_with_its_help(
        runs: dict[str, subprocess.CompletedProcess[str]]) -> None:
    result = runs['help']
    assert result.returncode == 0, result.stderr
    text = ' '.join(result.stdout.split())
    options = _cdc_options()
    assert len(options) >= 12
    for option, help_text in options:
        assert f'{option} ' in text
        assert ' '.join(help_text.split()) in text, option
    assert '--runner' in text and 'DirectRunner' in text


def test_unsupported_source_scheme(runs: dict[str, subprocess.CompletedProcess[str]]) -> None:
    line = _one_error_line(runs['bogus_source'], '--source')
    assert "'bogus://x'" in line and 'postgresql://' in line


def test_bad_sink(runs: dict[str, subprocess.CompletedProcess[str]]) -> None:
    line = _one_error_line(runs['bad_sink'], '--sink')
    assert "'csv:out'" in line and 'jsonl:DIR' in line


@pytest.mark.parametrize('case, given', [('mistyped', '--tabels'), ('abbreviated', '--table')])
def test_a_mistyped_option_is_refused_not_passed_on(
        runs: dict[str, subprocess.CompletedProcess[str]], case: str, given: str) -> None:
    """It used to go to the runner, which ignored it: the pipeline captured every table."""
    line = _one_error_line(runs[case], given)
    assert line.endswith(f'{given} is not an option; did you mean --tables?'), line


def test_a_mysql_sink_parameter_the_driver_does_not_take_is_one_line(
        runs: dict[str, subprocess.CompletedProcess[str]]) -> None:
    result = runs['mysql_sink_param']
    line = _one_error_line(result, '--sink')
    assert line.endswith("?sslmode=REQUIRED': unknown parameter 'sslmode'; valid: charset, "
                         'connect_timeout, read_timeout, ssl_ca, ssl_cert, ssl_key, '
                         'unix_socket, write_timeout'), line
    assert 'topsecret' not in result.stderr


def test_bad_snapshot(runs: dict[str, subprocess.CompletedProcess[str]]) -> None:
    line = _one_error_line(runs['bad_snapshot'], '--snapshot')
    assert "'sometimes'" in line and 'initial, never, only' in line


def test_bad_max_idle_secs(runs: dict[str, subprocess.CompletedProcess[str]]) -> None:
    line = _one_error_line(runs['bad_max_idle'], '--max_idle_secs')
    assert "'soon'" in line and 'seconds' in line


def test_the_source_password_is_never_printed_for_a_rejected_option(
        runs: dict[str, subprocess.CompletedProcess[str]]) -> None:
    result = runs['bad_snapshot']
    _one_error_line(result, '--snapshot')
    assert 'topsecret' not in result.stdout + result.stderr


def test_an_unreachable_source_is_one_line_without_the_password(
        runs: dict[str, subprocess.CompletedProcess[str]]) -> None:
    result = runs['mysql']  # options are valid: the failure comes when the source connects
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith(f'{PROG}: error: ') and 'db.invalid' in lines[-1], lines
    assert 'Traceback' not in result.stderr
    assert 'topsecret' not in result.stdout + result.stderr


def test_a_sink_format_not_written_yet_is_one_line(
        runs: dict[str, subprocess.CompletedProcess[str]]) -> None:
    line = _one_error_line(runs['avro_sink'], '--sink')
    assert 'jsonl:DIR' in line


def test_a_server_that_stops_answering_is_one_line_naming_the_wait() -> None:
    """The stall checks' NoAnswer is reported, not the driver error it caused (a shut-down
    socket reads as 'server closed the connection unexpectedly', which misleads)."""
    from pipelines.cdc import _setup_failure
    from transforms.deadline import NoAnswer

    class OperationalError(Exception):  # the driver's, by name, as _setup_failure looks
        pass

    text = ('the snapshot: no answer for 60 s, nor did a new connection within 20 s '
            '(connection timeout expired)')
    try:
        try:
            raise OperationalError('server closed the connection unexpectedly')
        except OperationalError as exc:
            raise NoAnswer(text) from exc
    except NoAnswer as exc:
        failed = RuntimeError(f"{exc} [while running 'ReadPostgresChanges/Read']")
        failed.__cause__ = exc
    assert _setup_failure(failed) == text


def test_the_demo_outside_a_source_checkout_says_why_in_one_line(monkeypatch, capsys) -> None:
    """An installed package has no tests/ (the demo's throwaway server comes from there)."""
    from pipelines import demo

    monkeypatch.setitem(sys.modules, 'tests.services.postgres', None)  # import fails
    with pytest.raises(SystemExit) as ended:
        demo.main(['--seconds', '1', '--out', 'never-written'])
    assert ended.value.code == 2
    assert capsys.readouterr().err == (
        'python -m pipelines.demo: error: the demo runs from a source checkout (make demo): '
        'it borrows the test harness (tests/) to start a throwaway PostgreSQL\n')


def test_the_demo_never_empties_a_directory_it_did_not_make(tmp_path, capsys) -> None:
    """``--out`` used to be removed whatever it held: ``--out .`` cost the checkout."""
    from pipelines import demo

    mine = tmp_path / 'mine'
    mine.mkdir()
    (mine / 'thesis.tex').write_text('years of work')
    with pytest.raises(SystemExit) as ended:
        demo.main(['--seconds', '1', '--out', str(mine)])
    assert ended.value.code == 2
    assert capsys.readouterr().err == (
        f"python -m pipelines.demo: error: --out '{mine}' holds files the demo did not write: "
        'name a new or empty directory\n')
    assert (mine / 'thesis.tex').read_text() == 'years of work'


def test_the_demo_without_a_postgresql_server_says_so_in_one_line(tmp_path, monkeypatch,
                                                                  capsys) -> None:
    from pipelines import demo
    from tests.services import MissingBinaryError
    from tests.services.postgres import PostgresServer

    def missing(cls, *args, **kwargs):
        raise MissingBinaryError('initdb not found: install the Debian package postgresql-15')

    monkeypatch.setattr(PostgresServer, 'start', classmethod(missing))
    earlier = tmp_path / 'demo-out'  # a directory an earlier demo made is emptied
    (earlier / 'public.orders').mkdir(parents=True)
    (earlier / '.changebeam-demo').write_text('')
    with pytest.raises(SystemExit) as ended:
        demo.main(['--seconds', '1', '--out', str(earlier)])
    assert ended.value.code == 1
    assert capsys.readouterr().err.splitlines()[-1] == (
        'python -m pipelines.demo: error: initdb not found: install the Debian package '
        'postgresql-15')
    assert not (earlier / 'public.orders').exists()


def test_a_full_disk_is_one_line_naming_the_file() -> None:
    import errno

    from pipelines.cdc import _setup_failure

    full = OSError(errno.ENOSPC, 'No space left on device', '/data/out/public.t/.part-1.tmp')
    failed = RuntimeError(f"{full} [while running 'WriteChangesToFiles/Write']")
    failed.__cause__ = full
    assert _setup_failure(failed) == (
        'No space left on device: /data/out/public.t/.part-1.tmp (once that is fixed, run '
        'again: what was not confirmed is read again)')
    looped = RuntimeError('a bug')
    looped.__cause__ = looped  # a cause chain that loops ends the search, not the program
    assert _setup_failure(looped) is None
