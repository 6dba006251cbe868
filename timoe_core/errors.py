"""The one exception type that means "the user's input is wrong".

The CLI turns a `TimoeError` into a single line on stderr and exit code 2; anything
else is a bug and exits 1. Messages name the problem and, where there is one, the fix.
"""


class TimoeError(Exception):
    """Bad input, usage or environment: reported to the user as one line, exit code 2."""
