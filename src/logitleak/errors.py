"""User-facing errors: one clear sentence naming the input and the fix."""


class LogitleakError(Exception):
    """An error the user caused and can fix; the CLI prints its message alone, no traceback."""


def first_line(err: BaseException, limit: int | None = 200) -> str:
    """The first line of an exception's message (its type's name when it has none), cut at ``limit``
    characters: what a one-sentence error quotes of a library's failure."""
    line = (str(err).strip().splitlines() or [type(err).__name__])[0]
    return line if limit is None else line[:limit]
