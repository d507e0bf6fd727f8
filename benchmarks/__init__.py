"""Benchmarks: each prints its figures and ratios against peers measured in the same run."""
