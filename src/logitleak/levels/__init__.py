"""The representational levels: their one table, and each level as a pure function of a capture.

The level table, the levels of the answer position, the lens, the vision transition and the
response levels."""
