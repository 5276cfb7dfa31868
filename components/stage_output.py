"""What a stage says to the person who started the run, from whatever process runs it.

A stage runs in a process of its own (a kfp.local subprocess, a cluster pod), whose output reaches the CLI, or a
pod's log, as plain lines among those of KFP and the libraries. The lines meant for a person carry a mark: the
project's own log records at INFO and above, a stage's start and end, its failure, its progress. The CLI
(pipelines/terminal.py) shows the marked lines and sends every line to the run's log file.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Iterator

MARK = "[lifecycle] "
ERROR_MARK = "[lifecycle:error] "
USER_ERROR_MARK = "[lifecycle:user-error] "  # a failure the user can fix (a LifecycleError)
PROGRESS_MARK = "[lifecycle:progress] "
PACKAGES = ("components", "monitoring", "pipelines")  # the project's loggers: a logger per module under these

log = logging.getLogger(__name__)


class MarkedFormatter(logging.Formatter):
    """The lines of the project's records at INFO and above get a mark; a traceback stays unmarked (the log
    file keeps it, the terminal does not show it)."""

    def format(self, record: logging.LogRecord) -> str:
        if record.name.split(".")[0] not in PACKAGES or record.levelno < logging.INFO:
            return super().format(record)
        if getattr(record, "progress", False):
            mark = PROGRESS_MARK
        elif getattr(record, "user_error", False):
            mark = USER_ERROR_MARK
        else:
            mark = ERROR_MARK if record.levelno >= logging.ERROR else MARK
        marked = logging.makeLogRecord(record.__dict__)
        marked.msg, marked.args = "\n".join(mark + line for line in record.getMessage().splitlines()), None
        return super().format(marked)


def configure_task_logging() -> None:
    """In a KFP task's process (kfp.local's subprocess, a pod): the project's loggers to stdout, marked. Any other
    process keeps its own set-up: the CLI's (a stage called in-process, as `lifecycle monitor` does), a test's."""
    main = sys.modules.get("__main__")
    if getattr(getattr(main, "__spec__", None), "name", "") == "kfp.dsl.executor_main":
        mark_project_logs()


def mark_project_logs() -> None:
    """The project's loggers to stdout, marked (unless something configured them already)."""
    for name in PACKAGES:
        logger = logging.getLogger(name)
        if logger.handlers:
            continue
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(MarkedFormatter("%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False  # not again through KFP's root handler
    logging.captureWarnings(True)  # library warnings are log records (unmarked), not lines among the stage's


class StageReport:
    """A stage's key result, set by the stage before it ends; shown on its closing line."""

    def __init__(self) -> None:
        self.result = ""


@contextlib.contextmanager
def reported_stage(stage: str) -> Iterator[StageReport]:
    """A line when the stage starts; one when it ends, with its time and key result; or its failure, named by
    the stage and the error's own message (the traceback goes to the log only)."""
    from components import timings
    from components.errors import LifecycleError

    configure_task_logging()
    log.info("%-14s started", stage)
    timings.stage_started(stage)
    started, report = time.perf_counter(), StageReport()
    try:
        yield report
    except LifecycleError as err:
        log.error("%s failed: %s", stage, err, extra={"user_error": True})
        raise
    except Exception as err:
        log.error("%s failed: %s: %s", stage, type(err).__name__, err)
        raise
    finally:
        timings.stage_ended()
    log.info(
        "%-14s done in %s%s",
        stage,
        duration(time.perf_counter() - started),
        f": {report.result}" if report.result else "",
    )


def duration(seconds: float) -> str:
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest} s" if minutes else f"{seconds:.1f} s"


class Progress:
    """A progress bar's state as marked lines (at most one every `every` seconds, and the last): the CLI draws
    them as a bar on a terminal; a pod's log gets a few lines."""

    def __init__(self, total: int, description: str, logger: logging.Logger, every: float = 2.0):
        self.total, self.description, self.logger, self.every = total, description, logger, every
        self.done, self.shown_at = 0, time.monotonic()

    def update(self, steps: int = 1) -> None:
        self.done += steps
        if self.done >= self.total or time.monotonic() - self.shown_at >= self.every:
            self.shown_at = time.monotonic()
            self.logger.info("%s %d/%d", self.description, self.done, self.total, extra={"progress": True})
