"""Where a stage task's time goes, for benchmarks/pipeline.py: the process's start-up before the stage (interpreter,
kfp's executor, imports), imports during the stage, MLflow calls, the stage's own work, and what follows it (kfp
writing the outputs, the exit). Off unless the environment variable TIMINGS_FILE names a JSON-lines file, to which
each task appends one record when it exits."""

from __future__ import annotations

import atexit
import builtins
import functools
import json
import os
import time

TIMINGS_FILE = "LIFECYCLE_TIMINGS_FILE"
IMPORTS, MLFLOW, WORK = "imports", "mlflow", "work"
SLOWEST_IMPORTS = 4


class _Clock:
    """Exclusive time per category: nested calls are charged to the innermost (an import inside an MLflow call is
    an import), so the categories add up to the stage's time."""

    def __init__(self):
        self.spent = {IMPORTS: 0.0, MLFLOW: 0.0, WORK: 0.0}
        self.imported: dict[str, float] = {}
        self.stack, self.since, self.running = [WORK], time.perf_counter(), True

    def stop(self) -> None:
        self._charge()
        self.running = False

    def enter(self, category: str) -> None:
        self._charge()
        self.stack.append(category)

    def leave(self) -> None:
        self._charge()
        self.stack.pop()

    def _charge(self) -> None:
        now = time.perf_counter()
        self.spent[self.stack[-1]] += now - self.since
        self.since = now

    def timed(self, category: str, function):
        @functools.wraps(function)
        def timed(*args, **kwargs):
            if not self.running:
                return function(*args, **kwargs)
            self.enter(category)
            try:
                return function(*args, **kwargs)
            finally:
                self.leave()

        return timed


_record: dict = {}


def stage_started(stage: str) -> None:
    """From here on (when timings are on) this process's imports and MLflow calls are timed for `stage`."""
    path = os.environ.get(TIMINGS_FILE)
    if not path or _record:
        return
    clock = _Clock()
    _record.update(task=stage, process_started=_process_started(), stage_started=time.time())
    builtins.__import__ = _timed_import(clock, builtins.__import__)
    _time_mlflow(clock)
    _record["clock"] = clock
    atexit.register(_write, path)


def stage_ended() -> None:
    if _record and "stage_ended" not in _record:
        _record["clock"].stop()
        _record["stage_ended"] = time.time()


def _process_started() -> float:
    """When this process started, on the wall clock. Not psutil's create_time: it adds the boot time, which Linux
    gives in whole seconds, so it is up to a second early."""
    try:
        with open("/proc/self/stat") as stat:
            started_after_boot = int(stat.read().rsplit(")", 1)[1].split()[19]) / os.sysconf("SC_CLK_TCK")
        return time.time() - (time.clock_gettime(time.CLOCK_BOOTTIME) - started_after_boot)
    except (OSError, AttributeError, ValueError, IndexError):  # not Linux
        import psutil

        return psutil.Process().create_time()


def _timed_import(clock: _Clock, original):
    """__import__, timed; each outermost import's time is kept by module name, for the slowest to be named."""

    def timed_import(name, *args, **kwargs):
        if not clock.running or clock.stack[-1] == IMPORTS:
            return original(name, *args, **kwargs)
        started = time.perf_counter()
        clock.enter(IMPORTS)
        try:
            return original(name, *args, **kwargs)
        finally:
            clock.leave()
            clock.imported[name] = clock.imported.get(name, 0.0) + time.perf_counter() - started

    return timed_import


def _time_mlflow(clock: _Clock) -> None:
    """Every public function of the MLflow modules the stages call, and every method of MlflowClient."""
    import mlflow
    import mlflow.artifacts
    import mlflow.data
    import mlflow.models
    import mlflow.pyfunc

    for module in (mlflow, mlflow.artifacts, mlflow.data, mlflow.models, mlflow.pyfunc):
        for name, value in list(vars(module).items()):
            if callable(value) and not name.startswith("_") and not isinstance(value, type):
                setattr(module, name, clock.timed(MLFLOW, value))
    for name, value in list(vars(mlflow.MlflowClient).items()):
        if callable(value) and not name.startswith("_"):
            setattr(mlflow.MlflowClient, name, clock.timed(MLFLOW, value))


def _write(path: str) -> None:
    clock = _record.pop("clock")
    slowest = sorted(clock.imported.items(), key=lambda item: -item[1])[:SLOWEST_IMPORTS]
    record = (
        _record
        | {"exited": time.time(), "slowest_imports": {name: round(s, 2) for name, s in slowest}}
        | {k: round(v, 3) for k, v in clock.spent.items()}
    )
    with open(path, "a") as out:
        out.write(json.dumps(record) + "\n")
