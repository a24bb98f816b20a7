"""Benchmarks of the training pipeline (not tests): run `benchmarks/benchmark.py --help`."""
