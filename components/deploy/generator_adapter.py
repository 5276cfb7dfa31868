"""Stage 6's MLflow side for task=generation: the export's parity and format figures logged, the card given a
Deployment section, the bundle published as a pyfunc beside the PyTorch model (components.registry)."""

from __future__ import annotations

from components.config import LifecycleConfig


def publish_generator(cfg: LifecycleConfig, source, data_dir: str, model_dir: str, out_dir: str):
    """(report, what publishing gave, what was found) for a generator: generative_export, then the champion or the
    candidate of a rollout."""
    import mlflow

    from components.deploy.generative_export import deploy_generator
    from components.evaluate.suite_runs import read_suite
    from components.handoff import MODEL_CARD, bundle_dir
    from components.pii import LogPii
    from components.registry import publish_generator_champion

    report = deploy_generator(
        model_dir,
        data_dir,
        out_dir,
        cfg.generation,
        cfg.model.max_length,
        cfg.seed,
        cfg.monitor.reference_size,
        cfg.serve.max_tokens,
        LogPii.of(cfg),
        read_suite(cfg),
        cfg.test_cases.max_fillings,
    )
    mlflow.log_metrics({k: v for k, v in report.to_dict().items() if isinstance(v, float)})
    mlflow.log_params({"served": report.served, "reference_pii": report.reference_pii})
    card = deployment_card(source.description or "", report)
    mlflow.log_text(card, MODEL_CARD)
    tags = {"format": f"onnx-{report.served}", "parity_max_abs_logprob_diff": f"{report.max_abs_logprob_diff:.2e}"}
    published = publish_generator_champion(
        source, str(bundle_dir(out_dir)), card, tags, cfg.generation.max_new_tokens, cfg.deploy.rollout
    )
    served = report.formats[report.served]
    found = (
        f"ONNX parity on {report.parity_prompts} test prompts, max |log-prob diff| {report.max_abs_logprob_diff:.1e}; "
        f"serves {report.served} ({served.size_mb:.0f} MB, {served.tokens_per_second:.0f} tokens/s)"
    )
    return report, published, found


def deployment_card(card: str, report) -> str:
    """Stage 5's card with a Deployment section: the format served and why, parity, each format's figures."""
    rows = "\n".join(
        f"| {name} | {f.size_mb:.1f} | {f.perplexity:.3f} | "
        + ("-" if f.pass_rate is None else f"{f.pass_rate:.0%}")
        + f" | {f.tokens_per_second:.1f} |"
        for name, f in report.formats.items()
    )
    return (
        card.rstrip()
        + f"\n\n## Deployment\n\nServed: ONNX {report.served} (onnxruntime-genai). {report.reason}.\n\n"
        + "| format | size (MB) | test perplexity | test cases passed | tokens/s |\n|---|---|---|---|---|\n"
        + rows
        + "\n"
    )
