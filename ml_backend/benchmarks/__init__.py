"""Benchmarks that print numbers (never assert them): run with ``python -m ml_backend.benchmarks.<name>``."""
