"""User-facing errors: one clear sentence naming the input and the fix."""


class LogitleakError(Exception):
    """An error the user caused and can fix; the CLI prints its message alone, no traceback."""
