"""The black-box audit of an OpenAI-compatible endpoint: the client, its cache, the answers it reads."""
