"""Probes and their statistics: from feature sets and labels to result rows.

Estimators, the batched optimiser, splits, plans, the sweep, metrics, the held-out test."""
