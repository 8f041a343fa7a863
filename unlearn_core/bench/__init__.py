"""Benchmarks behind ``unlearn bench ...``: each writes JSON rows, a markdown table and a PNG plot."""
