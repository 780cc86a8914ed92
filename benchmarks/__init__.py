"""softdirty's benchmark suite: ``python -m benchmarks --quick|--full`` (see benchmarks/README.md).

Every figure is min/median/max over repeats, and every claim is a ratio
between variants measured in the same run, on the same data, interleaved.
"""
