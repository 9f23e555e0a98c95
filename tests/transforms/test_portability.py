"""The CDC pipeline must run unchanged on Dataflow and Flink: checked offline through the
portable pipeline proto and the Flex Template spec gcloud would build."""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
from pathlib import Path

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.portability.api import beam_runner_api_pb2

from pipelines.cdc import build
from pipelines.options import CdcOptions, validate_cdc

REPO = Path(__file__).resolve().parents[2]
METADATA = REPO / 'templates' / 'cdc' / 'metadata.json'


def cdc_pipeline(*extra: str) -> beam.Pipeline:
    options = PipelineOptions(['--source', 'postgresql://cdc:pw@db.internal/shop',
                               '--sink', 'jsonl:/tmp/never-written', *extra])
    pipeline = beam.Pipeline(options=options)
    build(pipeline, validate_cdc(options))
    return pipeline


def test_pipeline_round_trips_through_the_portable_proto() -> None:
    proto = cdc_pipeline('--streaming').to_runner_api()
    names = {t.unique_name for t in proto.components.transforms.values()}
    assert any(name.startswith('WriteChangesToFiles') for name in names)
    # The source is a splittable DoFn: portable runners see it as one.
    read = next(t for t in proto.components.transforms.values()
                if t.unique_name == 'ReadPostgresChanges/ReadSlot/ParDo(_ReadSlotFn)')
    assert read.spec.urn == 'beam:transform:pardo:v1'
    payload = beam_runner_api_pb2.ParDoPayload.FromString(read.spec.payload)
    assert payload.restriction_coder_id
    again = beam.Pipeline.from_runner_api(proto, beam.runners.DirectRunner(), PipelineOptions())
    assert {t.unique_name for t in again.to_runner_api().components.transforms.values()} == names


def test_template_metadata_lists_every_cdc_option() -> None:
    parser = argparse.ArgumentParser()
    CdcOptions._add_argparse_args(parser)
    options = {a.dest: a.help for a in parser._actions if a.dest != 'help'}
    metadata = json.loads(METADATA.read_text())
    params = {p['name']: p for p in metadata['parameters']}
    assert params.keys() == options.keys()
    assert all(params[name]['helpText'] == help for name, help in options.items())
    assert not params['source']['isOptional'] and not params['sink']['isOptional']


@pytest.mark.skipif(os.environ.get('CI') != 'true' and shutil.which('gcloud') is None,
                    reason='gcloud is part of the CI image; locally it may be absent')
def test_gcloud_builds_the_flex_template_spec(tmp_path: Path) -> None:
    env = {**os.environ, 'CLOUDSDK_CONFIG': str(tmp_path / 'gcloud'),
           'CLOUDSDK_CORE_DISABLE_PROMPTS': '1'}
    result = subprocess.run(
        ['gcloud', 'dataflow', 'flex-template', 'build', 'gs://bucket/templates/cdc.json',
         '--image=us-docker.pkg.dev/p/r/changebeam-cdc:latest', '--sdk-language=PYTHON',
         f'--metadata-file={METADATA}', '--print-only', '--project=p'],
        capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    spec = json.loads(result.stdout[result.stdout.index('{'):])
    assert spec['metadata']['name'] == 'changebeam CDC'
    assert {p['name'] for p in spec['metadata']['parameters']} >= {'source', 'sink', 'tables'}
