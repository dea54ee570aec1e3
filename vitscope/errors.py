"""Errors a user can cause; the CLI prints them as one line, never a traceback."""


def one_line(e: BaseException) -> str:
    """The first line of an error's message (its type's name when it has none)."""
    text = str(e)
    return text.splitlines()[0] if text.strip() else type(e).__name__


class VitscopeError(Exception):
    """A problem with the user's input: the message says what, where, and what to do."""


class UnsupportedModelError(VitscopeError):
    """The model is not a ViT family that vitscope can ablate exactly."""


class StoreMismatch(VitscopeError):
    """A store exists but was built from other inputs or by another schema version."""
