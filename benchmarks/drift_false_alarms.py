"""False alarms and detection of the drift check, on the champion of a work dir (e.g. after `lifecycle demo-drift`).

Windows of held-back texts that the reference never saw should raise no alert; a shifted window should:
  - held-out: random windows from the champion's val and test splits (the training mix);
  - unseen, same mix: texts of the source data that no split holds (first class) with held-out texts of the others;
  - shifted: unseen texts of the first class only (the class mix moves from balanced to one-sided).

    python benchmarks/drift_false_alarms.py --set work_dir=work/demo-drift --set data.path=<the data file>
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import pandas as pd


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/sms_spam.yaml")
    parser.add_argument("--set", action="append", default=[], dest="overrides", metavar="KEY=VALUE")
    parser.add_argument("--size", type=int, default=200, help="texts per window")
    parser.add_argument("--windows", type=int, default=20, help="held-out windows (the other kinds get fewer)")
    args = parser.parse_args()

    import mlflow

    from components.config import load_config
    from components.handoff import model_uri
    from components.registry import CHAMPION, resolve_bundle
    from monitoring.core import in_log_form, monitor
    from pipelines.demo import champion_splits, unseen_rows
    from pipelines.local import tracking_uri_for

    cfg = load_config(args.config, args.overrides)
    cfg = cfg.model_copy(update={"work_dir": str(Path(cfg.work_dir).resolve())})
    mlflow.set_tracking_uri(tracking_uri_for(cfg))
    bundle, _, version = resolve_bundle(
        model_uri(cfg.tracking.registered_model, CHAMPION), Path(cfg.work_dir) / "monitoring" / "models"
    )
    splits = champion_splits(cfg)
    held_out = pd.concat([splits["val"], splits["test"]])
    unseen = unseen_rows(cfg, splits)
    first = sorted(held_out["label"].unique())[0]
    others = held_out[held_out["label"] != first]
    n_other = round(args.size * len(others) / len(held_out))

    def held_out_window(seed):
        return held_out.sample(args.size, random_state=seed)

    def unseen_same_mix(seed):
        return pd.concat(
            [
                unseen[unseen["label"] == first].sample(args.size - n_other, random_state=seed),
                others.sample(n_other, random_state=seed),
            ]
        )

    def shifted(seed):
        return unseen[unseen["label"] == first].sample(args.size, random_state=seed)

    kinds = [
        ("held-out val+test, training mix", held_out_window, args.windows),
        (f"unseen '{first}' + held-out others, training mix", unseen_same_mix, max(args.windows // 2, 1)),
        (f"shifted: unseen '{first}' only", shifted, max(args.windows // 4, 1)),
    ]
    print(
        f"champion v{version}; windows of {args.size} texts; drift when >= {cfg.monitor.drift_share:.0%} of the "
        f"features drifted\n"
    )
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, window, count in kinds:
            results = [
                monitor(bundle, in_log_form(cfg, window(seed)["text"].tolist()), cfg, Path(tmp) / f"{name}-{seed}")
                for seed in range(count)
            ]
            alerts = sum(r.drift_detected for r in results)
            rows.append((name, count, alerts, sum(r.drifted_share for r in results) / count))
            print(f"  {name}: {alerts} alerts in {count} windows", flush=True)
    print("\n| window | windows | alerts | alert rate | mean share of drifted features |\n|---|---|---|---|---|")
    for name, count, alerts, share in rows:
        print(f"| {name} | {count} | {alerts} | {alerts / count:.0%} | {share:.0%} |")


if __name__ == "__main__":
    main()
