"""Benchmarks and measurements, each with its own entry point (`python -m bench.<name>`); not tests."""
