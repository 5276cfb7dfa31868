"""Tasks that start warm under kfp.local. Its subprocess runner starts each task as a new Python, which imports kfp,
MLflow, torch and transformers again before the task does anything: seconds a task. Here one process imports them
once and forks a child per task. The child runs what kfp.local's command would have run (kfp's executor on the
component's source, with the task's arguments and environment) and exits with the task's exit code; its output is
printed through kfp.local as before. A command of any other shape runs as kfp.local runs it. Local runs only: on a
cluster every task is a pod of its own."""

from __future__ import annotations

import contextlib
import functools
import importlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading

# What every task imports, before the first task starts; then, one at a time while no task is waiting to start
# (the tasks run one after another, so mostly while one runs), what the later tasks import. A task that starts before
# a module of WARM_UP is in imports it itself, as a cold task does. "module:function" also calls the function: MLflow
# maps the installed packages to their modules (about 1 s) in every process that logs or loads a model, unless the
# process it was forked from has.
EXECUTOR = "kfp.dsl.executor_main"
PRELOAD = (
    EXECUTOR,
    "mlflow",
    "mlflow.store.tracking.sqlalchemy_store",
    "git",
    "pandas",
    "pyarrow.parquet",
    "psutil",
    "components.config",
    "components.tracking",
    "components.handoff",
    "components.stage_output",
)
WARM_UP = (
    "great_expectations",
    "torch",
    "transformers.modeling_utils",
    "peft",
    "sklearn.metrics",
    "matplotlib.pyplot",
    "torch.export",
    "onnxscript",
    "torch.onnx._internal.exporter._core",
    "onnxruntime.quantization",
    "evidently",
    "mlflow.utils.requirements_utils:_init_modules_to_packages_map",
)
_HEADER = 8  # bytes: the length of the request that follows


@contextlib.contextmanager
def warm_tasks():
    """While this lasts, kfp.local's subprocess runner starts its tasks from a warm process (on Linux: elsewhere
    fork is not safe once libraries such as torch are loaded, and tasks start cold, as kfp.local starts them)."""
    if sys.platform != "linux":
        yield
        return
    from kfp.local import subprocess_task_handler as handler

    server = TaskServer()
    original = handler.run_local_subprocess
    handler.run_local_subprocess = functools.partial(_run_task, server, original)
    try:
        yield
    finally:
        handler.run_local_subprocess = original
        server.stop()


def _run_task(server: TaskServer, original, full_command: list[str], env_vars: dict | None = None) -> int:
    call = executor_call(full_command)
    if call is None or not server.alive():
        return original(full_command=full_command, env_vars=env_vars)
    source, args = call
    return server.run(source, args, {**os.environ, **(env_vars or {}), "_KFP_RUNTIME": "true"})  # as the script


@functools.cache
def _executor_script() -> str | None:
    """The shell script of kfp's command for a Python component, as kfp.local runs it (with this Python); None
    where this kfp builds it otherwise (these helpers are kfp's own, not its API): then every task starts cold."""
    try:
        from kfp.dsl.component_factory import _get_command_and_args_for_lightweight_component
        from kfp.local.subprocess_task_handler import replace_python_executable

        def probe():
            pass

        command, _ = _get_command_and_args_for_lightweight_component(probe)
        return replace_python_executable(command, sys.executable)[2]
    except (ImportError, AttributeError, TypeError, IndexError):
        return None


def executor_call(full_command: list[str]) -> tuple[str, list[str]] | None:
    """(the component's source, the executor's arguments) when `full_command` is kfp's command for a Python
    component exactly; else None."""
    script = _executor_script()
    if script is None or len(full_command) < 4 or full_command[:2] != ["sh", "-ec"] or full_command[2] != script:
        return None
    return full_command[3], full_command[4:]


class TaskServer:
    """The warm process, and how a task is handed to it: the request (source, arguments, environment, working
    directory) and two pipes, one for the task's output and one for its exit code."""

    def __init__(self):
        ours, theirs = socket.socketpair()
        self.socket, self.lock = ours, threading.Lock()
        self.process = subprocess.Popen(
            [sys.executable, "-m", __name__, str(theirs.fileno())],
            pass_fds=[theirs.fileno()],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        theirs.close()

    def alive(self) -> bool:
        return self.process.poll() is None

    def run(self, source: str, args: list[str], env: dict) -> int:
        output_read, output_write = os.pipe()
        status_read, status_write = os.pipe()
        request = json.dumps({"source": source, "args": args, "env": env, "cwd": os.getcwd()}).encode()
        try:
            with self.lock:
                socket.send_fds(self.socket, [len(request).to_bytes(_HEADER, "big")], [output_write, status_write])
                self.socket.sendall(request)
        finally:
            os.close(output_write)
            os.close(status_write)
        with open(output_read, errors="replace") as output:  # as kfp.local prints a task's output
            for line in output:
                print(line, end="")
            print("\n")
        with open(status_read, "rb") as status:
            code = status.read()
        return int(code) if code else -signal.SIGKILL  # it ended without saying how: killed

    def stop(self) -> None:
        """Ends the warm process (it holds nothing to save; a task still running is a process of its own)."""
        self.socket.close()
        self.process.kill()
        self.process.wait()


def serve(connection: socket.socket) -> None:
    """Import PRELOAD, then fork a child per request until the socket closes, importing WARM_UP between them."""
    import select

    for module in PRELOAD:
        importlib.import_module(module)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the kernel reaps the children; their codes come by pipe
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the tasks; this process ends with its socket
    warm_up = list(WARM_UP)
    while True:
        while warm_up and not select.select([connection], [], [], 0)[0]:
            _import_if_installed(warm_up.pop(0))
        header, fds, _, _ = socket.recv_fds(connection, _HEADER, 2)
        if not header:
            return
        request = _receive(connection, int.from_bytes(header, "big"))
        if os.fork() == 0:
            connection.close()
            _run_child(json.loads(request), *fds)
        for fd in fds:
            os.close(fd)


def _import_if_installed(entry: str) -> None:
    module, _, function = entry.partition(":")
    try:
        imported = importlib.import_module(module)
    except ImportError:
        return  # an extra this environment lacks: a task that needs it says so itself
    if function:
        getattr(imported, function, lambda: None)()  # gone from a later version: the tasks do it themselves


def _receive(connection: socket.socket, size: int) -> bytes:
    chunks = []
    while size:
        chunk = connection.recv(min(size, 1 << 20))
        if not chunk:
            raise EOFError("the runner closed the socket inside a request")
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def _run_child(request: dict, output: int, status: int) -> None:
    """Be the task: what `python3 -m kfp.dsl.executor_main --component_module_path FILE ARGS` does after its
    imports, then exit as that process would (atexit handlers run)."""
    import atexit
    import runpy
    import tempfile
    import traceback

    for signum, handler in (
        (signal.SIGCHLD, signal.SIG_DFL),
        (signal.SIGTERM, signal.SIG_DFL),
        (signal.SIGINT, signal.default_int_handler),
    ):
        signal.signal(signum, handler)
    os.dup2(output, 1)
    os.dup2(output, 2)
    os.close(output)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    component = os.path.join(tempfile.mkdtemp(), "ephemeral_component.py")  # the command's mktemp -d
    with open(component, "w") as out:
        out.write(request["source"])
    sys.argv = [EXECUTOR, "--component_module_path", component, *request["args"]]
    code = 1
    try:
        runpy.run_module(EXECUTOR, run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as exit:
        code = exit.code if isinstance(exit.code, int) else (0 if exit.code is None else 1)
    except BaseException:
        traceback.print_exc()
    finally:
        atexit._run_exitfuncs()
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        os.write(status, str(code).encode())
        os._exit(code)


if __name__ == "__main__":
    serve(socket.socket(fileno=int(sys.argv[1])))
