"""What a person sees of a command: a line per stage, the key results, no traceback; the rest in the log (a whole
default run: tests/test_pipeline.py)."""

import io
import logging
import warnings

import pytest

from pipelines.cli import main


def test_the_console_shows_marked_lines_draws_no_bar_off_a_terminal_and_logs_every_line(tmp_path):
    from components.console import Progress, reported_stage
    from components.errors import LifecycleError
    from pipelines.console import capturing

    with capturing(verbose=False) as console:
        console.open_log(str(tmp_path), "try")
        terminal = console.terminal = console.error_stream = io.StringIO()
        logging.getLogger("a_library").info("a library's message")
        warnings.warn("a library's warning")
        print("a line of a task's output")
        with pytest.raises(LifecycleError), reported_stage("1-data") as stage:
            progress = Progress(2, "epoch 1/1", logging.getLogger("components.fine_tune.core"), every=0)
            progress.update()
            progress.update()
            stage.result = "never shown"
            raise LifecycleError("data.csv row 3: label is empty")
    shown = terminal.getvalue().splitlines()
    assert shown[0].startswith("1-data") and shown[0].endswith("started")
    assert shown[1:] == ["1-data failed: data.csv row 3: label is empty"]
    assert console.last_error == shown[1] and console.users_error
    log = console.log_path.read_text()
    for line in ("a library's message", "a library's warning", "a line of a task's output", "epoch 1/1 2/2"):
        assert line in log


def test_compile_takes_a_directory_for_its_output_and_refuses_other_suffixes(tmp_path, capsys):
    out = tmp_path / "compiled"
    assert main(["compile", "--set", "data.path=x.tsv", "--set", f"work_dir={tmp_path / 'work'}",
                 "-o", f"{out}/"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["monitor_pipeline.yaml", "pipeline.yaml", "sweep_pipeline.yaml"]
    assert main(["compile", "--set", "data.path=x.tsv", "--set", f"work_dir={tmp_path / 'work'}",
                 "-o", str(tmp_path / "pipeline.txt")]) == 2
    assert "expected a .yaml file or a directory" in capsys.readouterr().err


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize("command, settings, environment, expected", [
    (["run"], ["train.epochs=abc"], {}, "train.epochs: Input should be a valid integer"),
    (["run", "--config", "{tmp}"], [], {}, "cannot read the config: [Errno 21] Is a directory"),
    (["run"], ["data.path={tmp}"], {}, "{tmp}: a folder; expected a file"),
    (["rollback"], [], {}, "has no version with the alias 'previous' to roll back to"),
    (["monitor"], [], {}, "has no version of 'sms-spam-classifier' with the alias 'champion'"),
    (["serve"], [], {}, "has no version of 'sms-spam-classifier' with the alias 'champion'"),
    (["rollback"], [], {"MLFLOW_TRACKING_URI": "http://127.0.0.1:{port}"}, "does not answer (ConnectionError)"),
    (["run"], ["data.separator=;;"], {}, "data.separator: expected one character (\\t for a tab) (got ';;')"),
    (["run"], ["data.encoding=utf-9"], {}, "data.encoding: unknown encoding; e.g. utf-8, latin-1, cp1252"),
], ids=["bad-config-value", "config-is-a-directory", "data-is-a-directory", "rollback-without-previous",
        "monitor-without-champion", "serve-without-champion", "tracking-server-unreachable", "separator-too-long",
        "unknown-encoding"])
def test_a_user_mistake_is_one_message_and_exit_code_2_without_a_traceback(command, settings, environment, expected,
                                                                           tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    port = free_port()
    for name, value in environment.items():
        monkeypatch.setenv(name, value.format(port=port))
    fill = lambda text: text.format(tmp=tmp_path, port=port)  # noqa: E731
    settings = [f"work_dir={tmp_path / 'work'}", *map(fill, settings)]
    assert main([*map(fill, command), *(part for s in settings for part in ("--set", s))]) == 2
    printed = capsys.readouterr()
    assert fill(expected) in printed.err
    assert "Traceback" not in printed.out + printed.err
