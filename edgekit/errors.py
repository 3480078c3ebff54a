"""The one exception type for problems a user can fix."""


class EdgekitError(Exception):
    """A problem the user caused and can fix.

    The CLI prints its message as a single line, ``error: <message>``, and exits
    with a non-zero code. The message should say what is wrong and how to fix it.
    """

    exit_code = 2
