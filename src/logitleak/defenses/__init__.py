"""Defences: output-side transforms of what an API returns, and model-side concept erasure."""

from logitleak.defenses.output import ApiView, api_view, apply_output_defense
from logitleak.defenses.spec import Defense, Transform, parse_defenses

__all__ = ["ApiView", "Defense", "Transform", "api_view", "apply_output_defense", "parse_defenses"]
