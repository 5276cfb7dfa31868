"""The two kinds of failure: a mistake the user can fix (exit code 2, one message, no traceback) and a failure of
the run itself (exit code 1, the stage and the reason). Every error of the project's own derives from one."""


class LifecycleError(ValueError):
    """A problem the user can fix; the message names the file, key or URI and what was expected."""


class RunFailure(RuntimeError):
    """The run failed through no mistake of the user's (a crashed rank, a failed TrainJob, an export that does not
    match its model): the message names what failed and where its own report is."""
