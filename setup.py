"""Thin shim so Dataflow workers can install changebeam with ``--setup_file ./setup.py``.

All metadata lives in pyproject.toml.  The one thing here is the optional C fast paths: pgoutput
tuple decoding and rendering, the replication frame loop, and the SQL sink's COPY text.  Without
a compiler the build skips them, and each falls back to its pure-Python path.
"""
import setuptools

setuptools.setup(
    ext_modules=[
        setuptools.Extension(
            'transforms.sources.postgres._pgwire',
            ['transforms/sources/postgres/_pgwire.c'],
            optional=True,
        ),
        setuptools.Extension(
            'transforms.sources.postgres._pqcopy',
            ['transforms/sources/postgres/_pqcopy.c'],
            libraries=['dl'],
            optional=True,
        ),
        setuptools.Extension(
            'transforms.sinks.sql._copytext',
            ['transforms/sinks/sql/_copytext.c'],
            optional=True,
        ),
    ],
)
