"""The MLflow model registry: the champion as a predictor for the gate, registering stage 5's challenger and
publishing stage 6's champion, rollouts and rollback, and a registered bundle downloaded to serve or check. The
registry is the source of truth for what is served."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from components.errors import LifecycleError
from components.handoff import BUNDLE, BUNDLE_MODEL, model_uri, version_uri
from components.registry_card import DESCRIPTION_LIMIT, registry_description  # noqa: F401 (the limit: read here too)

if TYPE_CHECKING:
    from datetime import datetime

CHAMPION = "champion"
CHALLENGER = "challenger"
PREVIOUS = "previous"
CANDIDATE = "candidate"  # a new champion on trial on live traffic (deploy.rollout); servers of @champion follow it
ROLLOUT_TAGS = ("rollout.mode", "rollout.canary_percent", "rollout.started")
ROLLOUT_STATE = "rollout.state"  # on the candidate's version: running, promoted, rolled_back, superseded


class RegistryError(LifecycleError):
    """The registry lacks what a command needs: a model, a version, an alias."""


def champion_predictor(model_name: str, labels: list[str]):
    """(version, predictor) of the registered model's `champion`, or None when there is none yet."""
    import mlflow

    version = alias_version(mlflow.MlflowClient(), model_name, CHAMPION)
    if version is None:
        return None
    model = mlflow.pyfunc.load_model(model_uri(model_name, CHAMPION))

    def predict(texts: list[str]) -> np.ndarray:
        import pandas as pd

        out = model.predict(pd.DataFrame({"text": texts}))
        return np.array([[row.get(label, 0.0) for label in labels] for row in out["probabilities"]])

    return version, predict


def register_model(
    python_model,
    artifacts: dict[str, str],
    labels: list[str],
    model_name: str,
    card: str,
    tags: dict[str, str],
    example_texts: list[str],
) -> str:
    """Log a pyfunc (texts in, label and probabilities out) in the active run and register it with the model
    card as its description and `tags`. Returns the new version."""
    import pandas as pd
    from mlflow.models import infer_signature

    example = pd.DataFrame({"text": example_texts})
    output = pd.DataFrame({"label": labels[:1], "probabilities": [{label: 1.0 / len(labels) for label in labels}]})
    return _register(python_model, artifacts, model_name, card, tags, infer_signature(example, output), example)


def _register(python_model, artifacts, model_name: str, card: str, tags: dict, signature, example=None) -> str:
    """Log a pyfunc with its signature (and input example) in the active run and register it with the card as its
    description and `tags`. Returns the new version."""
    import mlflow

    info = mlflow.pyfunc.log_model(
        name="model",
        python_model=python_model,
        artifacts=artifacts,
        code_paths=[str(Path(__file__).parent)],  # the `components` package, so loading needs no install
        signature=signature,
        input_example=example,
        pip_requirements=_requirements(generator=tags.get("task") == "generation"),
        registered_model_name=model_name,
    )
    version = str(info.registered_model_version)
    client = mlflow.MlflowClient()
    client.update_model_version(model_name, version, description=registry_description(card, info.run_id))
    for key, value in tags.items():
        client.set_model_version_tag(model_name, version, key, value)
    return version


def register_challenger(
    model_name: str,
    model_dir: str,
    labels: list[str],
    card: str,
    tags: dict[str, str],
    example_texts: list[str],
    gate_passed: bool,
) -> str:
    """Stage 5: the fine-tuned PyTorch model as a new version with the card and the gate's tags; `challenger` when it
    passed the gate. Returns the version."""
    import mlflow

    from components.pyfunc_model import TextClassifier

    version = register_model(
        TextClassifier(),
        {"model_dir": model_dir},
        labels,
        model_name,
        card,
        tags | {"format": "pytorch"},
        example_texts,
    )
    if gate_passed:
        mlflow.MlflowClient().set_registered_model_alias(model_name, CHALLENGER, version)
    return version


def register_generator(
    model_name: str,
    model_dir: str,
    prompt_format: str,
    max_new_tokens: int,
    card: str,
    tags: dict[str, str],
    gate_passed: bool,
) -> str:
    """Stage 5 for task=generation: the fine-tuned causal LM as a pyfunc (prompts in, generations out) with the card
    and the gate's tags; `challenger` when it passed the gate. Returns the version."""
    import mlflow

    from components.pyfunc_model import TextGenerator

    artifacts = {"model_dir": model_dir, "prompt_format": prompt_format}
    version = _register_generator(
        TextGenerator(), artifacts, model_name, card, tags | {"format": "pytorch"}, max_new_tokens
    )
    if gate_passed:
        mlflow.MlflowClient().set_registered_model_alias(model_name, CHALLENGER, version)
    return version


def _register_generator(python_model, artifacts, model_name: str, card: str, tags: dict, max_new_tokens: int) -> str:
    import pandas as pd
    from mlflow.models import infer_signature

    # max_new_tokens: a parameter of predict (generation.max_new_tokens by default), which MLflow drops unless the
    # signature declares it. No input example: MLflow would load the model and generate to check it.
    signature = infer_signature(
        pd.DataFrame({"prompt": ["Name a primary colour."]}),
        pd.DataFrame({"generation": ["Red."]}),
        params={"max_new_tokens": max_new_tokens},
    )
    return _register(python_model, artifacts, model_name, card, tags | {"task": "generation"}, signature)


def champion_model_dir(model_name: str, download_dir: str | Path) -> tuple[str, str] | None:
    """(version, local folder) of the PyTorch model behind the champion (its source version, where the champion is
    a deployed bundle), or None when there is no champion yet."""
    import mlflow
    from mlflow.models import Model

    client = mlflow.MlflowClient()
    version = alias_version(client, model_name, CHAMPION)
    if version is None:
        return None
    source = version_uri(model_name, client.get_model_version(model_name, version).tags.get("source_version", version))
    # The pyfunc keeps the folder under its own name (artifacts/model); its MLmodel says where.
    artifact = Model.load(source).flavors["python_function"]["artifacts"]["model_dir"]["path"]
    local = mlflow.artifacts.download_artifacts(artifact_uri=f"{source}/{artifact}", dst_path=str(download_dir))
    return version, local


def publish_champion(
    source, bundle: str, labels: list[str], tags: dict[str, str], example_texts: list[str], rollout
) -> tuple[str, str | None, str]:
    """Stage 6: the ONNX bundle of the challenger `source` (a registered version, see `challenger`) as a new version
    with its card and tags, and `tags`; then `champion` directly (rollout.mode direct, or no champion yet), or
    `candidate` for a rollout on live traffic. Returns (the new version, the champion it replaced or None, the mode
    it reaches traffic by)."""
    from components.pyfunc_model import OnnxTextClassifier

    version = register_model(
        OnnxTextClassifier(),
        {"bundle": bundle},
        labels,
        source.name,
        source.description,
        source.tags | tags | {"source_version": str(source.version)},
        example_texts,
    )
    return version, *reach_traffic(source.name, version, rollout)


def publish_generator_champion(
    source, bundle: str, card: str, tags: dict[str, str], max_new_tokens: int, rollout
) -> tuple[str, str | None, str]:
    """Stage 6 for task=generation: the generator's ONNX bundle as a new version with `card`, the challenger's tags
    and `tags`, served as publish_champion's is."""
    from components.pyfunc_model import OnnxTextGenerator

    tags = source.tags | tags | {"source_version": str(source.version)}
    version = _register_generator(OnnxTextGenerator(), {"bundle": bundle}, source.name, card, tags, max_new_tokens)
    return version, *reach_traffic(source.name, version, rollout)


def reach_traffic(model_name: str, version: str, rollout) -> tuple[str | None, str]:
    """`champion` directly (rollout.mode direct, or no champion yet), or `candidate` for a rollout on live traffic:
    (the champion it replaced or None, the mode it reaches traffic by)."""
    import mlflow

    if rollout.mode == "direct" or alias_version(mlflow.MlflowClient(), model_name, CHAMPION) is None:
        return promote(model_name, version), "direct"
    start_rollout(model_name, version, rollout.mode, rollout.canary_percent)
    return None, rollout.mode


def start_rollout(model_name: str, version: str, mode: str, canary_percent: float) -> None:
    """`candidate` on `version`, with the rollout's mode, share and start on the version; a rollout still running
    is superseded (its version stays registered, and the champion is untouched)."""
    import datetime as dt

    import mlflow

    client = mlflow.MlflowClient()
    running = alias_version(client, model_name, CANDIDATE)
    if running and running != version:
        client.set_model_version_tag(model_name, running, ROLLOUT_STATE, "superseded")
    started = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    for key, value in zip(ROLLOUT_TAGS, (mode, f"{canary_percent:g}", started)):
        client.set_model_version_tag(model_name, version, key, value)
    client.set_model_version_tag(model_name, version, ROLLOUT_STATE, "running")
    client.set_registered_model_alias(model_name, CANDIDATE, version)


def rollout_settings(version) -> tuple[str, float, datetime]:
    """(mode, canary share, start) of a candidate's registered version (a ModelVersion). An alias set by hand has
    no rollout tags: a shadow since the version was registered."""
    import datetime as dt

    mode, percent, started = (version.tags.get(key) for key in ROLLOUT_TAGS)
    return (
        mode or "shadow",
        float(percent or 0),
        dt.datetime.fromisoformat(started)
        if started
        else dt.datetime.fromtimestamp(version.creation_timestamp / 1000, dt.timezone.utc),
    )


def end_rollout(model_name: str, candidate: str, promoted: bool, reason: str) -> str | None:
    """Promote the candidate to champion (the champion it leaves gets `previous`) or roll it back; either way the
    alias `candidate` goes, after `champion` moved, so that a server never sees neither. Returns the replaced
    champion when promoted."""
    import mlflow

    client = mlflow.MlflowClient()
    replaced = promote(model_name, candidate) if promoted else None
    client.set_model_version_tag(model_name, candidate, ROLLOUT_STATE, "promoted" if promoted else "rolled_back")
    client.set_model_version_tag(model_name, candidate, "rollout.reason", reason[:5000])
    client.delete_registered_model_alias(model_name, CANDIDATE)
    return replaced


def challenger(model_name: str, version: str):
    """The registered version stage 5 made (its description is the card, its tags the gate's)."""
    import mlflow

    return mlflow.MlflowClient().get_model_version(model_name, version)


def promote(model_name: str, version: str) -> str | None:
    """Point `champion` at `version`; the version it leaves gets `previous`. Returns that version, if any."""
    import mlflow

    client = mlflow.MlflowClient()
    current = alias_version(client, model_name, CHAMPION)
    if current and current != version:
        client.set_registered_model_alias(model_name, PREVIOUS, current)
    client.set_registered_model_alias(model_name, CHAMPION, version)
    return current if current != version else None


def rollback(model_name: str) -> tuple[str, str]:
    """Put `previous` back as `champion`; the demoted champion becomes `previous` (a second rollback undoes it).
    Returns (new champion, demoted version)."""
    import mlflow

    client = mlflow.MlflowClient()
    previous = alias_version(client, model_name, PREVIOUS)
    champion = alias_version(client, model_name, CHAMPION)
    if previous is None:
        raise RegistryError(
            f"registered model {model_name!r} has no version with the alias '{PREVIOUS}' to roll "
            f"back to (a champion that replaced another has one)"
        )
    client.set_registered_model_alias(model_name, CHAMPION, previous)
    if champion:
        client.set_registered_model_alias(model_name, PREVIOUS, champion)
    return previous, champion


def alias_version(client, model_name: str, alias: str) -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias(model_name, alias).version)
    except MlflowException:
        return None


def _requirements(generator: bool) -> list[str]:
    from importlib.metadata import version

    names = ("torch", "transformers", "pandas", "safetensors", "tokenizers", "onnxruntime")
    return [f"{name}=={version(name)}" for name in (*names, *(["onnxruntime-genai"] if generator else []))]


def resolve_bundle(model_uri: str, download_dir: str | Path) -> tuple[str, str, str]:
    """Download a registered ONNX model (models:/NAME@ALIAS or models:/NAME/VERSION): (bundle dir, name, version)."""
    import mlflow

    client = mlflow.MlflowClient()
    reference = model_uri.removeprefix("models:/")
    name, _, version = reference.partition("/")
    if "@" in name:
        name, alias = name.split("@", 1)
        version = alias_version(client, name, alias)
        if version is None:
            raise RegistryError(
                f"{model_uri}: the registry at {mlflow.get_tracking_uri()} has no version of "
                f"{name!r} with the alias {alias!r} (`lifecycle run` makes a champion)"
            )
    local = mlflow.artifacts.download_artifacts(
        artifact_uri=version_uri(name, version), dst_path=str(Path(download_dir) / f"{name}-{version}")
    )
    bundle = Path(local) / "artifacts" / BUNDLE  # the pyfunc's artifact "bundle"
    if not (bundle / BUNDLE_MODEL).is_file():
        raise LifecycleError(
            f"{model_uri} (version {version}) is not an ONNX bundle; serve a version that "
            f"stage 6 registered (alias champion)"
        )
    return str(bundle), name, version
