"""Thin shim so Dataflow workers can install changebeam with ``--setup_file ./setup.py``.

All metadata lives in pyproject.toml.  The one thing here is the optional C fast path of
pgoutput tuple decoding: without a compiler the build skips it and ``pgtypes`` falls back to
its pure-Python decoder.
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
    ],
)
