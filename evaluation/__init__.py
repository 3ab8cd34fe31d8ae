"""evaluation package (repository-level; not shipped to the Hub): the ALTA paper's benchmarks, one module each,
registered in `evaluation.registry`, with their metrics (`evaluation.metrics`, local `evaluate` modules), the pure
protocol functions (`evaluation.protocols`), the figures (`evaluation.plots`) and `alta-evaluate` (`evaluation.cli`).
"""
