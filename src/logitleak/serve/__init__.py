"""``logitleak serve``: an OpenAI-compatible server for a local model."""
