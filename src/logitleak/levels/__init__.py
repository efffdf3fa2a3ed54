"""The representational levels: the one level table, levels as pure functions of a capture, the lens, the vision transition, response levels."""
