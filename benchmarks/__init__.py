"""Benchmark scripts; a regular package so that a `benchmarks` module another installed package ships cannot shadow
these when the scripts import each other."""
