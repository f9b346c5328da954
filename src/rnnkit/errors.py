"""The one exception type for mistakes a user can make (bad shapes, bad files, bad arguments)."""


class RnnkitError(ValueError):
    """A user's mistake, with a message that says what was wrong and how to fix it.

    The command line prints the message on one line of stderr and exits with status 2;
    any other exception is a bug and keeps its traceback.
    """
