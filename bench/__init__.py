"""Benchmarks: run apart from the tests, every figure a ratio against baselines measured in the same run."""
