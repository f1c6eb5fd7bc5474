"""Checking variants against the answers PyTorch gave at export: metrics, tolerances, parity on any
backend, fixed-shape checks, divergence bisection (explain) and pre-flight. Torch-free."""
