"""Thin shim so Dataflow workers can install changebeam with ``--setup_file ./setup.py``.

All metadata lives in pyproject.toml.
"""
import setuptools

setuptools.setup()
