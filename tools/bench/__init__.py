"""Benchmarks beside same-run floors and peers; not part of the installed package."""
