"""Promotion and rollback on a real MLflow registry (SQLite), with versions that point at empty folders."""

import mlflow
import pytest

from components.registry import RegistryError, promote, rollback

NAME = "clf"


@pytest.fixture
def client(tmp_path):
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    client = mlflow.MlflowClient()
    client.create_registered_model(NAME)
    for _ in range(3):
        client.create_model_version(NAME, source=tmp_path.as_uri())
    return client


def alias(client, name):
    return str(client.get_model_version_by_alias(NAME, name).version)


def test_promotion_keeps_the_old_champion_as_previous_and_rollback_restores_it(client):
    assert promote(NAME, "1") is None
    assert alias(client, "champion") == "1"
    assert promote(NAME, "2") == "1"
    assert (alias(client, "champion"), alias(client, "previous")) == ("2", "1")
    assert rollback(NAME) == ("1", "2")
    assert (alias(client, "champion"), alias(client, "previous")) == ("1", "2")
    assert rollback(NAME) == ("2", "1")  # a second rollback undoes the first


def test_rollback_without_a_previous_champion_is_a_clear_error(client):
    promote(NAME, "1")
    with pytest.raises(RegistryError, match="no version with the alias 'previous'"):
        rollback(NAME)
    assert alias(client, "champion") == "1"


def test_a_card_too_long_for_the_registry_keeps_the_sections_that_fit_and_says_where_the_whole_is():
    from components.registry import DESCRIPTION_LIMIT, registry_description

    card = (
        "# Model card: x\n\nintro\n## Model\nshort\n## Slices\n"
        + "| row |\n" * 800
        + "## Validation gate: PASSED\n- ok\n"
    )
    assert len(card) > DESCRIPTION_LIMIT
    shortened = registry_description(card, "run123")
    assert len(shortened) <= DESCRIPTION_LIMIT
    assert "## Model\nshort" in shortened and "## Validation gate: PASSED\n- ok" in shortened
    assert "## Slices" not in shortened and "left out: Slices" in shortened and "MLflow run run123" in shortened
    assert registry_description("# short card\n", "run123") == "# short card\n"


def test_a_rollout_supersedes_a_running_one_and_ends_promoted_or_rolled_back_without_touching_the_champion_else(client):
    from components.registry import end_rollout, start_rollout

    promote(NAME, "1")
    start_rollout(NAME, "2", "shadow", 0)
    start_rollout(NAME, "3", "canary", 10)  # a newer retraining: the running rollout gives way
    assert client.get_model_version(NAME, "2").tags["rollout.state"] == "superseded"
    tags = client.get_model_version(NAME, "3").tags
    assert (alias(client, "candidate"), tags["rollout.mode"], tags["rollout.canary_percent"]) == ("3", "canary", "10")
    assert end_rollout(NAME, "3", promoted=False, reason="worse") is None
    assert alias(client, "champion") == "1" and "candidate" not in client.get_registered_model(NAME).aliases
    assert client.get_model_version(NAME, "3").tags["rollout.state"] == "rolled_back"
    start_rollout(NAME, "2", "shadow", 0)
    assert end_rollout(NAME, "2", promoted=True, reason="not worse") == "1"
    assert (alias(client, "champion"), alias(client, "previous")) == ("2", "1")
    assert "candidate" not in client.get_registered_model(NAME).aliases


def test_a_new_sqlite_store_starts_as_a_copy_of_mlflows_empty_one(tmp_path, monkeypatch):
    """A new work directory's store is a copy of an empty store made once (MLflow's migrations take seconds): the
    same tables and schema version as a store MLflow makes itself, and MLflow works on it as on its own."""
    import sqlite3

    from components.tracking import use_experiment

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))

    def schema(path):  # objects, each table's columns, and the migration; not the SQL text, whose order varies
        with sqlite3.connect(path) as db:
            objects = sorted(db.execute("SELECT type, name, tbl_name FROM sqlite_master"))
            columns = {t: list(db.execute(f"PRAGMA table_info('{t}')")) for kind, t, _ in objects if kind == "table"}
            return objects, columns, list(db.execute("SELECT * FROM alembic_version"))

    mlflow.MlflowClient(f"sqlite:///{tmp_path / 'own.db'}").search_experiments()  # made by MLflow itself
    for name in ("first", "second"):
        use_experiment(f"sqlite:///{tmp_path / name / 'mlflow.db'}", "sms-spam")
        assert schema(tmp_path / name / "mlflow.db") == schema(tmp_path / "own.db")
    assert [p.name for p in (tmp_path / "cache" / "llm-lifecycle").iterdir()] == [
        f"mlflow-{mlflow.__version__}-empty.db"
    ]
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'second' / 'mlflow.db'}")
    run = client.create_run(client.get_experiment_by_name("sms-spam").experiment_id)
    client.log_metric(run.info.run_id, "test_accuracy", 0.99)
    assert client.get_run(run.info.run_id).data.metrics == {"test_accuracy": 0.99}
    assert [e.name for e in client.search_experiments()] == ["sms-spam", "Default"]
