"""The base of the project's own errors: a user's mistake or an unusable input, told in one message (the CLI
prints it without a traceback)."""


class LifecycleError(ValueError):
    """A problem the user can fix; the message names the file, key or URI and what was expected."""
