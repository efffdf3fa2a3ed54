"""Probe sets: the procedural shapes set, user image folders, text sets."""

from logitleak.data.probeset import ProbeSet
from logitleak.data.shapes import ATTRIBUTES, QUESTIONS, make_shapes, render_shapes

__all__ = ["ATTRIBUTES", "QUESTIONS", "ProbeSet", "make_shapes", "render_shapes"]
