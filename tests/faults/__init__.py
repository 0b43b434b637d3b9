"""The fault matrix: one module per fault, each under steady load from ``tests.loadgen``."""
