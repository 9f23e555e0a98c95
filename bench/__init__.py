"""Benchmarks run by hand (``python -m bench.<name>``); each prints its figure next to the
physical limit measured in the same run.  Not part of ``make test``."""
