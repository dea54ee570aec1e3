"""Errors a user can cause; the CLI prints them as one line, never a traceback."""


class VitscopeError(Exception):
    """A problem with the user's input: the message says what, where, and what to do."""


class UnsupportedModelError(VitscopeError):
    """The model is not a ViT family that vitscope can ablate exactly."""


class StoreMismatch(VitscopeError):
    """A store exists but was built from other inputs or by another schema version."""
