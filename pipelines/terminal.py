"""The CLI's side of what a person sees (the stages' side is components/stage_output.py).

While a command runs, stdout, stderr, the loggers and Python's warnings all write to one Console. It shows on the
terminal the marked lines (the stages' starts, ends, key results and failures), draws their progress as bars
(on a terminal only), and writes every line to the command's log file, `work_dir/logs/<command>-<time>.log`.
With `--verbose` the terminal gets every line too.
"""

from __future__ import annotations

import contextlib
import io
import logging
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

from components.stage_output import ERROR_MARK, MARK, PACKAGES, PROGRESS_MARK, USER_ERROR_MARK, MarkedFormatter

_active: Console | None = None  # the console of the command running in this process, if any


class Console(io.TextIOBase):
    def __init__(self, terminal: TextIO, errors: TextIO, verbose: bool = False):
        self.terminal, self.error_stream, self.verbose = terminal, errors, verbose
        self.log_path: Path | None = None
        self.last_error: str | None = None  # the last failure a stage reported
        self.users_error = False  # whether it was a mistake of the user's (bad data, say) rather than a bug
        self._log: TextIO | io.StringIO = io.StringIO()  # lines before the log file is known
        self._partial = ""
        self._bar = None

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        *lines, self._partial = (self._partial + text).split("\n")
        for line in lines:
            self._line(line)
        return len(text)

    def flush(self) -> None:
        self._log.flush()

    def open_log(self, work_dir: str, command: str) -> Path:
        """The command's log file, which gets the lines written so far too."""
        folder = Path(work_dir) / "logs"
        folder.mkdir(parents=True, exist_ok=True)
        self.log_path = folder / f"{command}-{time.strftime('%Y%m%d-%H%M%S')}.log"
        earlier = self._log.getvalue() if isinstance(self._log, io.StringIO) else ""
        self._log = open(self.log_path, "a", encoding="utf-8", buffering=1)  # by line: `tail -f` shows progress
        self._log.write(earlier)
        return self.log_path

    def position(self) -> int:
        self._log.flush()
        return self._log.tell()

    def show(self, text: str) -> None:
        """A line for the person (and the log)."""
        self._log.write(text + "\n")
        self._print(text)

    def error(self, text: str) -> None:
        """An error for the person, on stderr (and the log)."""
        self._log.write(text + "\n")
        self._print(text, self.error_stream)

    def close(self) -> None:
        self._end_bar()
        if self._partial:
            self._line(self._partial)
        self._log.close()

    def _line(self, line: str) -> None:
        self._log.write(line + "\n")
        content = line.strip()  # kfp.local indents a task's lines
        if content.startswith(PROGRESS_MARK):
            self._progress(content[len(PROGRESS_MARK) :])
            if self.verbose and not self.terminal.isatty():
                self._print(line)
        elif content.startswith((ERROR_MARK, USER_ERROR_MARK)):
            self.users_error = content.startswith(USER_ERROR_MARK)
            self.last_error = content.split("] ", 1)[1]
            self._print(self.last_error, self.error_stream)
        elif content.startswith(MARK):
            self._print(content[len(MARK) :])
        elif self.verbose:
            self._print(line)

    def _print(self, text: str, stream: TextIO | None = None) -> None:
        self._end_bar()
        stream = stream or self.terminal
        stream.write(text + "\n")
        stream.flush()

    def _progress(self, state: str) -> None:
        if not self.terminal.isatty():
            return
        from tqdm import tqdm

        description, fraction = state.rsplit(" ", 1)
        done, total = map(int, fraction.split("/"))
        if self._bar is None or self._bar.desc != description:
            self._end_bar()
            self._bar = tqdm(total=total, desc=description, unit="step", file=self.terminal, leave=False)
        self._bar.update(done - self._bar.n)
        if done >= total:
            self._end_bar()

    def _end_bar(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


@contextlib.contextmanager
def capturing(verbose: bool, capture_output: bool = True) -> Iterator[Console]:
    """For one command: the project's loggers (marked) go to a Console; so do the libraries' loggers, Python's
    warnings, stdout and stderr when `capture_output` (not for servers, whose output is their log)."""
    global _active
    console = Console(sys.stdout, sys.stderr, verbose)
    root, project = logging.getLogger(), [logging.getLogger(name) for name in PACKAGES]
    saved = (root.handlers[:], root.level, [(p.handlers[:], p.level, p.propagate) for p in project])
    handler = logging.StreamHandler(console)
    handler.setFormatter(MarkedFormatter("%(message)s"))
    for logger in project:
        logger.handlers, logger.propagate = [handler], False
        logger.setLevel(logging.INFO)
    if capture_output:
        library_handler = logging.StreamHandler(console)
        library_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.handlers = [library_handler]
        root.setLevel(logging.INFO)
        logging.captureWarnings(True)
    _active = console
    streams = (contextlib.redirect_stdout(console), contextlib.redirect_stderr(console)) if capture_output else ()
    try:
        with contextlib.ExitStack() as stack:
            for stream in streams:
                stack.enter_context(stream)
            yield console
    finally:
        _active = None
        logging.captureWarnings(False)
        root.handlers, root.level = saved[0], saved[1]
        for logger, (handlers, level, propagate) in zip(project, saved[2]):
            logger.handlers, logger.level, logger.propagate = handlers, level, propagate
        console.close()


def active() -> Console | None:
    return _active


def log_since(run_id: str, position: int) -> None:
    """The command's log from `position` on, as the MLflow run's artifact logs/<log file name>."""
    import tempfile

    import mlflow

    if _active is None or _active.log_path is None:
        return
    end = _active.position()  # a byte offset: the log is UTF-8, whose decoder keeps no state between lines
    with open(_active.log_path, "rb") as log, tempfile.TemporaryDirectory() as scratch:
        log.seek(position)
        segment = Path(scratch) / _active.log_path.name
        segment.write_bytes(log.read(end - position))
        mlflow.MlflowClient().log_artifact(run_id, str(segment), "logs")
