"""Models: the built-in organism (a tiny LLaVA trained here) and the adapters that load any model."""
