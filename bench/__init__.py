"""Benchmarks that print tables next to a baseline measured in the same run."""
