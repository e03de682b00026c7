"""Small training tasks shared by the examples, the benchmarks and ``signify ablate``."""
