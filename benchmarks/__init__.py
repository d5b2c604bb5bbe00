"""Reproducible benchmarks: each module prints a table and writes JSON (``python -m benchmarks.<name> --help``).

Run from the repository root (the package is not installed); the shared data folder ``../shared/data`` is found
by :func:`benchmarks.common.shared_data_dir`.
"""
