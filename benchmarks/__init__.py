"""Benchmarks: `python -m benchmarks [NAME]`; they print figures and ratios, they assert nothing."""
