"""Probes and their statistics: estimators, the batched optimiser, splits, plans, the sweep, metrics, the held-out test."""
