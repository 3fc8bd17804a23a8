"""Benchmarks: one harness and each benchmark as a small config of it."""
