"""Beam's gs:// filesystem pointed at a GCS emulator without a search for credentials.

    connect_gcs_emulator_anonymously()   # in main(), before anything reads or writes gs://

google-cloud-storage connects anonymously to the emulator that ``STORAGE_EMULATOR_HOST``
names. Beam's GCS filesystem first asks google-auth for default credentials, and retries that
with backoff: with none configured (an emulator needs none), ~20 s pass before it warns and
connects anonymously anyway. After this call, a Beam GCS client made while the variable is set
is anonymous at once. Without the variable nothing changes: real GCS gets Beam's credentials.
"""

from __future__ import annotations

import logging
import os
from typing import Any

__all__ = ['connect_gcs_emulator_anonymously']

_LOG = logging.getLogger(__name__)
_EMULATOR = 'STORAGE_EMULATOR_HOST'


def connect_gcs_emulator_anonymously() -> None:
    """Wraps Beam's GCS client factory once per process (Beam's FileSystems has imported
    it already); a no-op without Beam's gcp extra."""
    try:
        from apache_beam.io.gcp import gcsio
    except ImportError:  # no gcp extra: Beam has no gs:// filesystem to configure
        return
    beams = getattr(gcsio, 'create_storage_client', None)
    if beams is None:
        if os.environ.get(_EMULATOR):
            _LOG.warning('this Beam has no gcsio.create_storage_client: gs:// at %s may wait '
                         'for a credentials lookup first', os.environ[_EMULATOR])
        return
    if getattr(beams, 'anonymous_for_emulator', False):
        return

    def create_storage_client(pipeline_options: Any, use_credentials: bool = True) -> Any:
        return beams(pipeline_options, use_credentials and not os.environ.get(_EMULATOR))

    create_storage_client.anonymous_for_emulator = True  # type: ignore[attr-defined]
    gcsio.create_storage_client = create_storage_client
