"""The one exception type that reaches users as a one-line message and exit code 2."""


class UserError(Exception):
    """A problem with the user's input or options.

    The CLI prints ``str(error)`` on one line and exits with code 2, without a
    traceback. Messages name the file or option, what is wrong and what to do.
    """
