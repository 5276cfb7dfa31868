"""Stage 3, training environment: device, precision, threads, seeds and the facts needed to reproduce a run."""

from __future__ import annotations

import os
import platform
from importlib import metadata

from components.handoff import Environment
from components.reproducibility import apply_environment

LIBRARIES = ("torch", "transformers", "peft", "tokenizers", "kfp", "mlflow", "great-expectations", "pandas")


def resolve_device(requested: str) -> str:
    import torch

    from components.config import ConfigError

    if requested != "auto":
        available = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
        if not available[requested]:
            raise ConfigError(f"train.device={requested} but this machine has no {requested} device")
        return requested
    if torch.cuda.is_available():
        return "cuda"
    if torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def resolve_precision(requested: str, device: str) -> str:
    import torch

    from components.config import ConfigError

    bf16_ok = device == "cuda" and torch.cuda.is_bf16_supported()
    if requested == "bf16" and not bf16_ok:
        raise ConfigError(f"train.precision=bf16 needs a CUDA GPU with bf16 support; the device is {device}")
    if requested == "auto":
        return "bf16" if bf16_ok else "fp32"
    return requested


def environment(device: str, precision: str, threads: int | None, seed: int, hyperparameters: dict) -> Environment:
    """Resolve and apply device, precision, threads and seeds; collect versions and hardware."""
    device = resolve_device(device)
    precision = resolve_precision(precision, device)
    threads = threads or os.cpu_count() or 1
    apply_environment(threads, seed)
    return Environment(
        device=device,
        precision=precision,
        threads=threads,
        seed=seed,
        hyperparameters=hyperparameters,
        libraries={name: _version(name) for name in LIBRARIES},
        hardware=hardware(),
        python=platform.python_version(),
    )


def hardware() -> dict:
    import psutil
    import torch

    facts = {
        "cpu": _cpu_name(),
        "cpu_cores": os.cpu_count(),
        "ram_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "gpu": None,
        "gpu_memory_gb": None,
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        facts.update(
            gpu=props.name, gpu_memory_gb=round(props.total_memory / 2**30, 1), gpu_count=torch.cuda.device_count()
        )
    return facts


def _cpu_name() -> str:
    try:  # Linux names the model here; platform.processor() is often empty there
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def pip_freeze() -> str:
    """The installed distributions, as `pip freeze` lists them (without running pip)."""
    found = {(d.metadata["Name"] or "?", d.version) for d in metadata.distributions()}
    return "\n".join(f"{name}=={version}" for name, version in sorted(found, key=lambda nv: nv[0].lower()))


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"
