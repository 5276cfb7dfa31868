import pytest
import torch

from components.config import ConfigError
from components.environment import core as environment_stage
from components.environment.core import pip_freeze, resolve_precision

NO_GPU = not torch.cuda.is_available()


def test_environment_records_device_precision_versions_and_hardware():
    env = environment_stage.environment("auto", "auto", 1, 5, {"epochs": 3})
    assert env.device == ("cuda" if torch.cuda.is_available() else "cpu")
    assert env.precision == ("bf16" if env.device == "cuda" and torch.cuda.is_bf16_supported() else "fp32")
    assert torch.get_num_threads() == 1 and env.threads == 1
    assert env.libraries["torch"] == torch.__version__
    assert env.hardware["cpu_cores"] >= 1 and env.hardware["ram_gb"] > 0
    assert env.hyperparameters == {"epochs": 3}
    assert "torch==" in pip_freeze()


@pytest.mark.skipif(not NO_GPU, reason="checks the errors of a machine without a GPU")
def test_asking_for_a_gpu_or_bf16_where_there_is_none_is_a_clear_error():
    with pytest.raises(ConfigError, match="train.device=cuda"):
        environment_stage.environment("cuda", "auto", 1, 0, {})
    with pytest.raises(ConfigError, match="train.precision=bf16"):
        resolve_precision("bf16", "cpu")
