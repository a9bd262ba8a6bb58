"""The one error type users see: a single line that names the problem and the fix."""


class HwnasError(Exception):
    """A user-facing error. The CLI prints ``error: <message>`` and exits non-zero, no traceback."""
