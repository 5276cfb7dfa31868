"""One retraining per cool-down across monitor pods that share nothing but the MLflow server: several claimer
processes against one PostgreSQL-backed server, their steps forced to interleave."""

import multiprocessing
import time

import pytest

CLAIMERS = 4


def claim_in_process(tracking_uri: str, experiment: str, index: int, decided, claimed, stagger_s: float, results):
    """One monitor pod: it claims after `decided` (all have read the claims and found retraining allowed) and
    re-reads after `claimed` (all have recorded theirs), or `stagger_s` * index later, one after another."""
    from components.config import LifecycleConfig
    from monitoring.retraining import claim_retraining

    cfg = LifecycleConfig.model_validate(
        {
            "data": {"path": "x.csv"},
            "tracking": {"experiment": experiment},
            "monitor": {"cooldown_hours": 24, "claim_settle_seconds": 0},
        }
    )

    def pause(phase: str) -> None:
        barrier = decided if phase == "decided" else claimed
        if barrier is not None:
            barrier.wait(timeout=120)
        if phase == "decided":
            time.sleep(stagger_s * index)

    results.put((index, *claim_retraining(cfg, tracking_uri, f"alert-{index}", pause=pause)))


@pytest.mark.slow
@pytest.mark.parametrize("interleaving", ["all record, then all re-read", "one after another, all decided first"])
def test_concurrent_claimers_start_exactly_one_retraining(interleaving, tracking_server):
    import mlflow

    from monitoring.retraining import CLAIM_TAG, TRIGGER_TAG, retrainings

    experiment = f"claims-{interleaving.split(',')[0].replace(' ', '-')}"
    context = multiprocessing.get_context("spawn")
    decided = context.Barrier(CLAIMERS)
    claimed = context.Barrier(CLAIMERS) if interleaving.startswith("all record") else None
    stagger = 0.0 if claimed else 1.5
    results = context.Queue()
    claimers = [
        context.Process(
            target=claim_in_process, args=(tracking_server.uri, experiment, i, decided, claimed, stagger, results)
        )
        for i in range(CLAIMERS)
    ]
    for claimer in claimers:
        claimer.start()
    outcomes = sorted(results.get(timeout=180) for _ in claimers)
    for claimer in claimers:
        claimer.join(timeout=30)

    winners = [(i, run) for i, run, _ in outcomes if run]
    assert len(winners) == 1, outcomes
    assert all("claimed the retraining first" in why for _, run, why in outcomes if not run)
    if not claimed:  # the first to record its claim wins; the later ones see it
        assert winners[0][0] == 0
    client = mlflow.MlflowClient(tracking_server.uri)
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    runs = client.search_runs([experiment_id], f"tags.`{TRIGGER_TAG}` = 'drift'")
    assert len(runs) == CLAIMERS
    withdrawn = [r for r in runs if r.data.tags.get(CLAIM_TAG) == "withdrawn"]
    assert len(withdrawn) == CLAIMERS - 1 and {r.info.status for r in withdrawn} == {"KILLED"}
    assert [r.run_id for r in retrainings(client, experiment_id)] == [winners[0][1]]
