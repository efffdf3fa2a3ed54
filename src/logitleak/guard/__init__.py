"""``logitleak guard``: the defending proxy in front of any OpenAI-compatible upstream."""
