"""The one user-facing error type.

Raise :class:`IcpoError` where a problem caused by the user's input is found (a missing file,
malformed JSON, an unknown family or model, a package that is not installed). The CLI turns it
into a single line on stderr and exit code 2. Anything else is a bug and keeps its traceback.
"""


class IcpoError(Exception):
    """A problem with the user's input or environment, reported as one line."""
