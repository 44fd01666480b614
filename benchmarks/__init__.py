"""Benchmarks: kvstate against a naive Open edX-style baseline (``python -m benchmarks.run``)."""
