"""What a person sees of a command: a line per stage, the key results, no traceback; the rest in the log."""

import io
import logging
import warnings

import pytest
from conftest import SHARED_SMS, compile_pipelines

from pipelines.cli import main
from pipelines.tracking_server import free_port

STAGES = ["1-data", "2-model", "3-environment", "4-fine-tune", "5-evaluate", "6-deploy", "7-monitor"]


@pytest.mark.slow
@pytest.mark.skipif(not SHARED_SMS.is_file(), reason="needs ../shared/data/sms_spam")
def test_a_default_run_prints_a_line_per_stage_start_and_end_and_logs_everything_else(tmp_path, capsys, monkeypatch):
    import mlflow

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    sms_slice = tmp_path / "sms.tsv"
    sms_slice.write_text("".join(SHARED_SMS.read_text(encoding="utf-8").splitlines(keepends=True)[:700]))
    # The default config (the bundled model, its strategy and epochs) on 700 of the SMS texts.
    assert (
        main(
            [
                "run",
                "--set",
                f"data.path={sms_slice}",
                "--set",
                f"work_dir={tmp_path / 'work'}",
                "--set",
                "gate.min_accuracy=0",
                "--set",
                "gate.min_macro_f1=0",
                "--set",
                "test_cases.min_pass_rate=null",  # a model of 700 texts is held to no floor: stage 6 runs
            ]
        )
        == 0
    )

    printed = capsys.readouterr()
    lines = printed.out.splitlines()
    assert len(lines) <= 40, printed.out
    for stage in STAGES:
        assert any(line.startswith(f"{stage} ") and line.endswith("started") for line in lines), stage
        assert any(line.startswith(f"{stage} ") and " done in " in line for line in lines), stage
    assert sum(line.startswith("epoch ") for line in lines) == 3
    assert any("test accuracy" in line and "macro-F1" in line and "cross-entropy" in line for line in lines)
    assert printed.err == ""
    assert "KFP Executor" not in printed.out and "Traceback" not in printed.out

    log_file = next(line.split()[-1] for line in lines if line.startswith("log "))
    log = open(log_file, encoding="utf-8").read()
    assert "KFP Executor" in log and "executor_input" in log and "4-fine-tune" in log
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'work' / 'mlflow.db'}")
    client = mlflow.MlflowClient()
    (parent,) = client.search_runs(
        [client.get_experiment_by_name("sms-spam").experiment_id], "tags.mlflow.parentRunId IS NULL"
    )
    (logged,) = client.list_artifacts(parent.info.run_id, "logs")
    assert logged.path.endswith(".log") and logged.file_size > 10_000


def test_the_console_shows_marked_lines_draws_no_bar_off_a_terminal_and_logs_every_line(tmp_path):
    from components.errors import LifecycleError
    from components.stage_output import Progress, reported_stage
    from pipelines.terminal import capturing

    with capturing(verbose=False) as console:
        console.open_log(str(tmp_path), "try")
        terminal = console.terminal = console.error_stream = io.StringIO()
        logging.getLogger("a_library").info("a library's message")
        warnings.warn("a library's warning", stacklevel=1)
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
    settings = ["data.path=x.tsv", f"work_dir={tmp_path / 'work'}"]
    assert compile_pipelines(settings, "-o", f"{out}/") == 0
    assert sorted(p.name for p in out.iterdir()) == ["monitor_pipeline.yaml", "pipeline.yaml", "sweep_pipeline.yaml"]
    assert compile_pipelines(settings, "-o", str(tmp_path / "pipeline.txt")) == 2
    assert "expected a .yaml file or a directory" in capsys.readouterr().err


@pytest.mark.parametrize(
    "command, settings, environment, expected",
    [
        (["run"], ["train.epochs=abc"], {}, "train.epochs: Input should be a valid integer"),
        (["run", "--config", "{tmp}"], [], {}, "cannot read the config: [Errno 21] Is a directory"),
        (["run"], ["data.path={tmp}"], {}, "{tmp}: a folder; expected a file"),
        (["rollback"], [], {}, "has no version with the alias 'previous' to roll back to"),
        (["monitor"], [], {}, "has no version of 'sms-spam-classifier' with the alias 'champion'"),
        (["serve", "--port", "{port}"], [], {}, "has no version of 'sms-spam-classifier' with the alias 'champion'"),
        (["serve", "--port", "65534"], [], {}, "--port 65534: expected 1 to 65533 (MLServer uses the HTTP port and"),
        (
            ["serve", "--port", "{port}"],
            ["serve.log_pii=hash"],
            {"LIFECYCLE_PII_HASH_KEY": "short"},
            "serve.log_pii=hash needs a secret key of at least 16 characters in the environment variable "
            "LIFECYCLE_PII_HASH_KEY (serve.log_pii_key_env); it is 5 characters long",
        ),
        (["rollback"], [], {"MLFLOW_TRACKING_URI": "http://127.0.0.1:{port}"}, "does not answer (ConnectionError)"),
        (["run"], ["data.separator=;;"], {}, "data.separator: expected one character (\\t for a tab) (got ';;')"),
        (["run"], ["data.encoding=utf-9"], {}, "data.encoding: unknown encoding; e.g. utf-8, latin-1, cp1252"),
    ],
    ids=[
        "bad-config-value",
        "config-is-a-directory",
        "data-is-a-directory",
        "rollback-without-previous",
        "monitor-without-champion",
        "serve-without-champion",
        "serve-port-too-high",
        "serve-hash-without-key",
        "tracking-server-unreachable",
        "separator-too-long",
        "unknown-encoding",
    ],
)
def test_a_user_mistake_is_one_message_and_exit_code_2_without_a_traceback(
    command, settings, environment, expected, tmp_path, capsys, monkeypatch
):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    port = free_port(3)  # serve's HTTP, gRPC and metrics
    for name, value in environment.items():
        monkeypatch.setenv(name, value.format(port=port))
    fill = lambda text: text.format(tmp=tmp_path, port=port)  # noqa: E731
    settings = [f"work_dir={tmp_path / 'work'}", *map(fill, settings)]
    assert main([*map(fill, command), *(part for s in settings for part in ("--set", s))]) == 2
    printed = capsys.readouterr()
    assert fill(expected) in printed.err
    assert "Traceback" not in printed.out + printed.err


def test_serve_on_a_port_whose_grpc_neighbour_is_taken_names_that_port_before_downloading_anything(
    tmp_path, capsys, monkeypatch
):
    import socket

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    port = free_port(3)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port + 1))
        taken.listen()
        assert main(["serve", "--port", str(port), "--set", f"work_dir={tmp_path / 'work'}"]) == 2
    printed = capsys.readouterr()
    assert f"port {port + 1} on 127.0.0.1 (the gRPC server;" in printed.err
    assert "Traceback" not in printed.out + printed.err
    assert not (tmp_path / "work" / "serving").exists()
