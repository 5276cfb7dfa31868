"""kfp.local's tasks started from the warm process: the same results, output and failures as a cold start."""

import os

import pytest
from kfp import dsl, local

from pipelines import warm_tasks


@dsl.component(base_image="python:3.11-slim", install_kfp_package=False)
def parent_of_task(fail: bool) -> int:
    import os

    print("the task's own line")
    if fail:
        raise ValueError("the task failed on purpose")
    return os.getppid()


@pytest.mark.slow
def test_a_task_forks_from_the_warm_process_and_its_output_failure_and_result_come_back(tmp_path, capfd):
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path))
    with warm_tasks.warm_tasks():
        from kfp.local import subprocess_task_handler

        server = subprocess_task_handler.run_local_subprocess.args[0]
        assert parent_of_task(fail=False).output == server.process.pid != os.getpid()
        assert "the task's own line" in capfd.readouterr().out
        with pytest.raises(RuntimeError, match="FAILURE"):
            parent_of_task(fail=True)
        assert "ValueError: the task failed on purpose" in capfd.readouterr().out
    assert server.process.poll() is not None  # the warm process ends with the run
    assert subprocess_task_handler.run_local_subprocess.__module__ == "kfp.local.subprocess_task_handler"
    assert parent_of_task(fail=False).output != server.process.pid  # cold again: the shell of kfp's command


def test_a_command_of_another_shape_is_not_taken():
    assert warm_tasks.executor_call(["sh", "-c", "echo hi"]) is None
    assert warm_tasks.executor_call(["python3", "-m", "kfp.dsl.executor_main"]) is None
