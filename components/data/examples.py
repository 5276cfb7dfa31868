"""Stage 1 for task=generation: read the examples (components/generation/formats.py), find personal data, render
each prompt with the base model's tokenizer, check them (a gate: fields, roles, template, token lengths), drop
duplicates, split seeded with every prompt in one split, check for leakage by prompt, write the splits and the
manifest."""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path

import pandas as pd

from components.config import DataConfig, PiiConfig
from components.config.schema_generation import GenerationConfig
from components.data.core import read_sources
from components.data.personal_data import ExamplesPersonalData, pii_counts
from components.data.splitting import PII, fingerprint, resolve_leakage
from components.data.table_readers import FEEDBACK, DataError, resolve_sources
from components.data.validation import DataValidationError
from components.generation.encoding import encode_examples, render_prompt
from components.generation.formats import Example, detect_format, missing_columns, to_examples
from components.handoff import MANIFEST, SPLITS, VALIDATION_REPORT, Manifest, split_path, write_json
from components.pii import checked_entities

log = logging.getLogger(__name__)
SHOWN = 8  # refused examples named in the error
# Every split's Parquet file: `text` is what names an example (the user's last turn, or the whole text for domain
# fine-tuning): duplicates, leakage and drift are judged on it.
SCHEMA = {"text": "string", "prompt": "string (rendered)", "response": "string", "turns": "JSON", "source": "string"}


def prepare_examples(
    config: DataConfig,
    gen: GenerationConfig,
    tokenizer,
    max_length: int,
    seed: int,
    cache_dir: str | Path,
    out_dir: str | Path,
    pii: PiiConfig | None = None,
) -> Manifest:
    """Stage 1 for generation; writes the splits, the manifest and the validation report to out_dir."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sources = resolve_sources(config, cache_dir)
    frames, digests, skipped = read_sources(config, sources)
    frames = {name: frame for name, frame in frames.items() if not _response_feedback(name, frame)}
    report = {"sources": {}, "checks": []}
    scan = ExamplesPersonalData(config.pii, pii or PiiConfig(), sum(map(len, frames.values())))
    tables = {
        name: _examples_table(frame, gen, tokenizer, sources[name], report, scan) for name, frame in frames.items()
    }
    scan.refuse_found()
    # Duplicates within a file go; the same example in two given splits is leakage, judged below.
    unique = {name: table.drop_duplicates(subset=["prompt", "response"]) for name, table in tables.items()}
    duplicates = sum(len(tables[name]) - len(table) for name, table in unique.items())
    rows = pd.concat([t.assign(source="feedback" if n.startswith(FEEDBACK) else "data") for n, t in unique.items()])
    _check_lengths(rows, tokenizer, max_length, gen, report)
    splits = _split(rows, config, seed, sources, {n: t.index for n, t in unique.items()})
    splits, leaking = _without_leakage(splits, sources, config.on_leakage)
    for name, split in splits.items():
        split[list(SCHEMA)].to_parquet(split_path(out_dir, name), index=False)
    write_json(out_dir, VALIDATION_REPORT, report)
    manifest = Manifest(
        out_dir=str(out_dir),
        source=", ".join(sources.values()),
        source_sha256=", ".join(digests),
        labels=[],
        counts={name: {"examples": len(split)} for name, split in splits.items()},
        fingerprint=fingerprint(splits, ("prompt", "response")),
        dropped_duplicates=duplicates,
        dropped_conflicting_texts=0,
        dropped_leaking_texts=leaking,
        skipped_records=sum(n.records for n in skipped.values()),
        skipped_files=sum(n.objects for n in skipped.values()),
        pii=config.pii,
        pii_entities=checked_entities(pii or PiiConfig()) if config.pii != "off" else [],
        pii_found={name: pii_counts(split) for name, split in splits.items()},
        pii_texts={name: int(split[PII].astype(bool).sum()) for name, split in splits.items()},
        schema=SCHEMA,
    )
    write_json(out_dir, MANIFEST, manifest.to_dict())
    return manifest


def _response_feedback(name: str, frame: pd.DataFrame) -> bool:
    """Is it a file of ratings and corrections of served responses (by response_id)? Those are no examples: the
    monitor writes the corrected ones, joined with their prompts, as an examples file beside them
    (monitoring/generation_rollout.py), which is read as data."""
    if name.startswith(FEEDBACK) and "response_id" in frame.columns:
        log.info("%s: feedback on served responses, not examples: its corrections train through the monitor", name)
        return True
    return False


def _examples_table(
    frame: pd.DataFrame, gen: GenerationConfig, tokenizer, where: str, report: dict, scan: ExamplesPersonalData
) -> pd.DataFrame:
    """The file's examples, checked (fields, role order, the template renders) after personal data is found (and
    redacted): text, prompt, response, turns, the kinds of personal data and the key that groups an example with
    others of the same prompt, indexed by file and line; a DataValidationError names every refused example's file,
    line and field."""
    if frame.empty:
        raise DataError(f"{where}: no examples to read")
    fmt = detect_format(frame.columns, gen, where)
    missing = missing_columns(frame.columns, fmt, gen)
    if missing:
        raise DataValidationError(
            f"{where}: format {fmt} needs the column(s) {missing}; the file has {sorted(map(str, frame.columns))}. "
            "Map them with generation.columns (e.g. {prompt: question})"
        )
    examples, problems = to_examples(frame, fmt, gen, where)
    prompts, kinds = [], []
    for i, (line, example) in enumerate(zip(frame.index, examples)):
        if example:
            turns, response, found = scan.scan(example.turns, example.response, f"{where}: line {line}")
            example = examples[i] = Example(turns, response)
            kinds.append(found)
        try:
            prompts.append(render_prompt(example.turns, tokenizer, gen) if example else None)
        except Exception as err:  # a template is user code (Jinja): any error is the example's
            prompts.append(None)
            problems.append(f"{where}: line {line}: the chat template does not render: {err}")
    report["sources"][where] = {"format": fmt, "examples": len(frame), "refused": len(problems)}
    if problems:
        report["checks"].append({"check": "examples", "success": False, "failures": problems[:100]})
        listed = "\n".join(f"  {p}" for p in problems[:SHOWN])
        raise DataValidationError(
            f"{len(problems)} of {len(frame)} examples of {where} (format {fmt}) cannot train:\n{listed}"
            + (f"\n  ... and {len(problems) - SHOWN} more" if len(problems) > SHOWN else "")
        )
    turns = [json.dumps(e.turns, ensure_ascii=False) for e in examples]
    return pd.DataFrame(
        {
            "text": [e.turns[-1]["content"] if e.turns else e.response for e in examples],
            "prompt": prompts,
            "response": [e.response for e in examples],
            "turns": turns,
            PII: kinds,
            # the whole conversation before the response, or the whole text: "Thanks!" ends many chats
            "_key": [t if e.turns else e.response for t, e in zip(turns, examples)],
        },
        index=pd.Index([f"{where}: line {line}" for line in frame.index], name="row"),
    )


def _check_lengths(rows: pd.DataFrame, tokenizer, max_length: int, gen: GenerationConfig, report: dict) -> None:
    """No example may be left without a trained token, and at most max_truncated_share may be cut."""
    encoded = encode_examples(tokenizer, rows["prompt"].tolist(), rows["response"].tolist(), max_length)
    truncated, untrained = encoded.truncated(max_length), encoded.untrained(max_length)
    lengths = pd.Series(encoded.full_tokens)
    report["tokens"] = {
        "max_length": max_length,
        "median": float(lengths.median()),
        "p95": float(lengths.quantile(0.95)),
        "max": int(lengths.max()),
        "truncated": int(truncated.sum()),
        "truncated_share": float(truncated.mean()),
        "without_trained_token": int(untrained.sum()),
    }
    failures = []
    if untrained.any():
        named = ", ".join(rows.index[untrained][:SHOWN])
        failures.append(
            f"{int(untrained.sum())} examples have prompts of model.max_length={max_length} tokens or more, so no "
            f"response token would train: {named}"
        )
    if truncated.mean() > gen.max_truncated_share:
        failures.append(
            f"{truncated.mean():.1%} of the examples ({int(truncated.sum())}) are longer than model.max_length="
            f"{max_length} tokens (the longest {int(lengths.max())}, 95% within {int(lengths.quantile(0.95))}); "
            f"generation.max_truncated_share allows {gen.max_truncated_share:.1%}: raise model.max_length"
        )
    report["checks"].append({"check": "token lengths", "success": not failures, "failures": failures})
    if failures:
        raise DataValidationError("\n".join(failures))


def _split(rows: pd.DataFrame, config: DataConfig, seed: int, sources: dict, lines: dict) -> dict[str, pd.DataFrame]:
    """The given splits (`lines`: each file's rows), or one file split seeded with all the examples of a prompt in
    the same split."""
    parts = {name: rows[rows.index.isin(index)] for name, index in lines.items()}
    main = "all" if "all" in sources else "train"
    parts[main] = pd.concat([parts[main], *(part for name, part in parts.items() if name.startswith(FEEDBACK))])
    if main == "all":
        splits = dict(zip(SPLITS, _by_prompt(parts["all"], [config.split.train, config.split.val], seed)))
    else:
        if "val" not in parts:
            parts["train"], parts["val"] = _by_prompt(parts["train"], [1 - config.val_from_train], seed)
        splits = {name: parts[name] for name in SPLITS}
    _none_empty(splits, sources[main], len(rows))
    return splits


def _none_empty(splits: dict[str, pd.DataFrame], where: str, examples: int) -> None:
    for name, part in splits.items():
        if part.empty:
            raise DataValidationError(
                f"{where}: the {name} split is empty ({examples} examples, every example of a prompt in one split): "
                "use more data, other data.split fractions or data.val_from_train"
            )


def _without_leakage(splits: dict, sources: dict, policy: str) -> tuple[dict, dict]:
    """No prompt (conversation before the response, or plain text) in two splits: resolve_leakage on the key."""
    kept, leaking = resolve_leakage({n: s.assign(text=s["_key"]) for n, s in splits.items()}, sources, policy)
    splits = {name: splits[name].loc[kept[name].index] for name in SPLITS}
    _none_empty(splits, ", ".join(sources.values()), sum(map(len, splits.values())))
    return splits, leaking


def _by_prompt(rows: pd.DataFrame, shares: list[float], seed: int) -> list[pd.DataFrame]:
    """Parts of about these shares (the rest last), each prompt's examples kept together, in a seeded order."""
    keys = list(dict.fromkeys(rows["_key"]))
    random.Random(seed).shuffle(keys)
    part_of, bounds, done = {}, [round(len(rows) * sum(shares[: i + 1])) for i in range(len(shares))], 0
    counts = rows["_key"].value_counts()
    for key in keys:
        part_of[key] = next((i for i, bound in enumerate(bounds) if done < bound), len(shares))
        done += counts[key]
    which = rows["_key"].map(part_of)
    return [rows[which == i] for i in range(len(shares) + 1)]
