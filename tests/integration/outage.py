"""What the tests of a source whose server goes away share: the pipeline's first change, and
how it ends (by itself, with one line)."""
from __future__ import annotations

import subprocess
import time
from pathlib import Path

from tests.replay import read_jsonl_dir

UNREACHABLE = 'python -m pipelines.cdc: error: the source has been unreachable for '


def wait_for_first_insert(out: Path, pipeline: subprocess.Popen[str], timeout: float = 60) -> None:
    """The pipeline wrote an insert into ``jsonl:out``: it streams."""
    deadline = time.monotonic() + timeout
    while not [d for d in read_jsonl_dir(str(out)) if d['op'] == 'c']:
        assert time.monotonic() < deadline and pipeline.poll() is None, 'no progress'
        time.sleep(0.05)


def ended_by_itself(pipeline: subprocess.Popen[str], timeout: float) -> tuple[str, float]:
    """Its output and the seconds it took to end, which it must do within ``timeout``."""
    began = time.monotonic()
    try:
        output, _ = pipeline.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        pipeline.kill()
        raise AssertionError(f'still waiting: {pipeline.communicate()[0][-3000:]}') from None
    return output, time.monotonic() - began


def assert_gave_up_in_one_line(pipeline: subprocess.Popen[str], output: str) -> None:
    assert pipeline.returncode == 1, output[-3000:]
    last = output.strip().splitlines()[-1]
    assert last.startswith(UNREACHABLE), output[-3000:]
    assert 'resumes from the last confirmed position' in last
