"""One exception type for problems the user can fix (bad input, bad options).

The CLI prints its message alone, without a traceback, and exits non-zero.
"""


class NetcompressError(Exception):
    """A problem in the user's input: the message names the file or field and the fix."""
