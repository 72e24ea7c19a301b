"""The one exception type users see: its message is a single line naming the problem and the fix."""


class StgError(Exception):
    """A user-facing error. The CLI prints ``error: <message>`` and exits with status 2."""
