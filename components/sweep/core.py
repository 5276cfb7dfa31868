"""Stage 4 as a search: an Optuna study over the fine-tuning hyper-parameters (components/sweep/space.py), its trials
trained by stage 4's own core and pruned on their per-epoch validation loss. The study lives in a database that
every worker reaches (SQLite beside MLflow's here, PostgreSQL on a cluster), so a sweep spreads over workers and
resumes where it stopped. Selection is on validation only: the test split is stage 5's. Importable without MLflow
or KFP."""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field, replace

from components import storage
from components.config import ConfigError, LifecycleConfig, set_key, takes_integers, validate_config
from components.errors import LifecycleError
from components.handoff import FineTuneJob, write_json
from components.sweep.space import defaults, params_text, search_space, space_as_given

log = logging.getLogger(__name__)

DEFAULTS = "defaults"  # the user attribute of the first trial: the config's own values
INTERRUPTED = "interrupted"  # a trial whose worker died: tried again with its params, not counted in the budget
RETRY_OF = "retry_of"  # the interrupted trial a trial tries again
CHECKPOINT = "checkpoint"  # a trial's checkpoint URI: a retried trial resumes from its interrupted one
MODEL = "model"  # where the trial's model was kept: the best complete trial's so far

# The trial's nested MLflow run, opened with the trial's number and params; it is given the trial's outcome last.
TrialRun = Callable[[int, dict], AbstractContextManager["TrialLog"]]


class SweepError(LifecycleError):
    """The sweep cannot give a model: no trial completed, or the study's database cannot be reached."""


@dataclass
class TrialLog:
    """What a trial's run records as it goes: metrics by step, and the outcome at the end."""

    log_metrics: Callable[[dict, int], None]
    outcome: dict = field(default_factory=dict)  # state, val_loss, val_accuracy, seconds, pruned_at_epoch, error


@dataclass
class Sweep:
    """The study's account beside the winning model (handoff.SWEEP_ACCOUNT), for the model card and the sweep's run."""

    study: str
    storage: str  # without a password
    space: dict  # key -> distribution
    trials: int  # finished: complete, pruned or failed (interrupted ones not counted)
    complete: int
    pruned: int
    failed: int
    winner: int  # the trial's number
    winner_params: dict
    defaults_trial: int | None  # the trial of the config's own values, when it finished
    best_val_loss: float
    best_val_accuracy: float
    defaults_val_loss: float | None

    def to_dict(self) -> dict:
        return asdict(self)


def study_storage(cfg: LifecycleConfig, tracking_uri: str) -> str:
    """tune.storage, else optuna.db beside a SQLite tracking store; psycopg 3 for PostgreSQL (SQLAlchemy's
    default driver, psycopg2, is not installed)."""
    url = cfg.tune.storage
    if url is None:
        if not tracking_uri.startswith("sqlite:///"):
            raise ConfigError(
                f"tune.storage: the study needs a database every worker reaches; with the tracking "
                f"server {tracking_uri}, set it to one of its own, e.g. "
                f"postgresql://USER:PASSWORD@HOST:5432/optuna"
            )
        url = tracking_uri.rsplit("/", 1)[0] + "/optuna.db"
    return "postgresql+psycopg://" + url.removeprefix("postgresql://") if url.startswith("postgresql://") else url


def open_study(cfg: LifecycleConfig, url: str, name: str):
    """The sweep's study (created when new), minimising the validation loss."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # our own line per trial says what a person needs
    pruners = {
        "median": lambda: optuna.pruners.MedianPruner(n_startup_trials=cfg.tune.prune_after_trials),
        "successive_halving": lambda: optuna.pruners.SuccessiveHalvingPruner(min_resource=1),
        "none": optuna.pruners.NopPruner,
    }
    sampler = optuna.samplers.TPESampler(seed=cfg.seed, n_startup_trials=min(10, max(1, cfg.tune.trials // 2)))
    try:
        return optuna.create_study(
            storage=url,
            study_name=name,
            direction="minimize",
            load_if_exists=True,
            sampler=sampler,
            pruner=pruners[cfg.tune.pruner](),
        )
    except Exception as err:  # SQLAlchemy's errors: an unreachable server, a wrong password, no such database
        raise SweepError(
            f"tune.storage: cannot open the study's database {hide_password(url)}: "
            f"{type(err).__name__}: {str(err).splitlines()[0]}"
        ) from None


def prepare_study(cfg: LifecycleConfig, study) -> list[str]:
    """A new study starts with the config's own values; a resumed one tries again, from their checkpoints, the
    trials that its earlier workers left running (they are gone: a sweep resumes once its run stopped). Returns
    what it did, for the person."""
    from optuna.trial import TrialState

    said = []
    if not study.trials:
        study.enqueue_trial(defaults(cfg), user_attrs={DEFAULTS: True})
        said.append("trial 0 is the config's own values")
    retried = {t.user_attrs.get(RETRY_OF) for t in study.get_trials(deepcopy=False)}
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.FAIL)):
        if trial.number in retried or (trial.state == TrialState.FAIL and not trial.user_attrs.get(INTERRUPTED)):
            continue
        if trial.state == TrialState.RUNNING:  # its worker was killed (a finished trial can no longer be changed)
            study._storage.set_trial_user_attr(trial._trial_id, INTERRUPTED, True)
            study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        study.enqueue_trial(
            trial.params,
            user_attrs={
                RETRY_OF: trial.number,
                CHECKPOINT: trial.user_attrs.get(CHECKPOINT),
                DEFAULTS: trial.user_attrs.get(DEFAULTS, False),
            },
        )
        said.append(f"trial {trial.number} was interrupted: tried again from its checkpoint")
    return said


def finished_trials(study) -> list:
    """The trials that count in the budget: complete, pruned or failed, but not interrupted."""
    from optuna.trial import TrialState

    return [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL))
        if not t.user_attrs.get(INTERRUPTED)
    ]


def sweep_uri(cfg: LifecycleConfig, sweep_run_id: str) -> str:
    """Where a sweep's trials keep their checkpoints and the best models (removed once the winner is chosen)."""
    return storage.join(cfg.checkpoints_uri(), sweep_run_id)


def trial_config(cfg: LifecycleConfig, params: dict) -> LifecycleConfig:
    """The config with a trial's params set, validated like a user's --set."""
    raw = cfg.model_dump(mode="json")
    for key, value in params.items():
        set_key(raw, key, value, "a trial's params")
    return validate_config(raw, source=f"a trial's params {params}")


def suggest(trial, cfg: LifecycleConfig) -> dict:
    """The trial's value of each searched key."""
    params = {}
    for key, spec in search_space(cfg).items():
        if spec.choices is not None:
            params[key] = trial.suggest_categorical(key, spec.choices)
        elif takes_integers(key):
            params[key] = trial.suggest_int(key, int(spec.low), int(spec.high), step=int(spec.step or 1), log=spec.log)
        else:
            params[key] = trial.suggest_float(key, spec.low, spec.high, step=spec.step, log=spec.log)
    return params


def run_trials(
    cfg: LifecycleConfig, study, job: FineTuneJob, sweep_uri: str, deadline: float, trial_run: TrialRun
) -> int:
    """Trials until tune.trials have finished (over every worker) or the deadline (0: none) has passed; a trial
    under way at the deadline ends first. Each trial trains with stage 4's core; the best complete one so far
    keeps its model at sweep_uri/trial-N/model. Returns how many trials this worker ran."""
    base = defaults(cfg)
    outcomes = {}  # trial number -> (params, TrialLog), said once Optuna has stored the trial: a stop after its
    # line loses nothing

    def objective(trial) -> float:
        return train_trial(trial, cfg, job, sweep_uri, trial_run, outcomes)

    def after_trial(study, trial) -> None:
        params, record = outcomes[trial.number]
        outcome = record.outcome
        log.log(
            logging.WARNING if outcome["state"] == "failed" else logging.INFO,
            "%s",
            trial_line(trial.number, params, base, outcome),
        )
        if len(finished_trials(study)) >= cfg.tune.trials:  # other workers finish trials too
            study.stop()

    left = cfg.tune.trials - len(finished_trials(study))
    timeout = deadline - time.time() if deadline else None
    if left <= 0 or (timeout is not None and timeout <= 0):
        return 0
    study.optimize(objective, n_trials=left, timeout=timeout, catch=(Exception,), callbacks=[after_trial])
    return len(outcomes)


def train_trial(trial, cfg: LifecycleConfig, job: FineTuneJob, sweep_uri: str, trial_run: TrialRun, outcomes: dict):
    """One trial: the config with its params, trained by stage 4's core; what it did is kept in `outcomes` (trial
    number -> (params, TrialLog)) and its model, when it is the best complete trial so far, at
    sweep_uri/trial-N/model. Returns its best validation loss; raises optuna.TrialPruned when pruned."""
    import optuna

    from components.fine_tune.core import fine_tune

    params = suggest(trial, cfg)
    trial_cfg = trial_config(cfg, params)
    folder = storage.join(sweep_uri, f"trial-{trial.number:04d}")
    checkpoint = trial.user_attrs.get(CHECKPOINT) or storage.join(folder, "checkpoint")
    trial.set_user_attr(CHECKPOINT, checkpoint)
    epochs = []
    with trial_run(trial.number, params) as record, tempfile.TemporaryDirectory(prefix="lifecycle-trial-") as out:
        record.outcome = {"state": "failed"}
        trial_job = replace(
            job, out_dir=out, checkpoint_uri=checkpoint, model_cfg=trial_cfg.model, train_cfg=trial_cfg.train
        )
        started = time.perf_counter()
        try:
            result = fine_tune(trial_job, record.log_metrics, lambda row: _report(trial, row, epochs))
        except optuna.TrialPruned:
            record.outcome = {
                "state": "pruned",
                "pruned_at_epoch": epochs[-1]["epoch"],
                "val_loss": min(row["val_loss"] for row in epochs),
                "seconds": time.perf_counter() - started,
            }
            raise
        except KeyboardInterrupt:  # Ctrl-C: Optuna marks it failed; the resumed sweep tries it again
            trial.set_user_attr(INTERRUPTED, True)
            record.outcome = {"state": "interrupted"}
            raise
        except Exception as err:  # the trial fails (Optuna records why); the sweep goes on
            record.outcome = {
                "state": "failed",
                "error": f"{type(err).__name__}: {err}",
                "seconds": time.perf_counter() - started,
            }
            raise
        finally:
            outcomes[trial.number] = (params, record)
        record.outcome = {
            "state": "complete",
            "val_loss": result.best_val_loss,
            "val_accuracy": result.best_val_accuracy,
            "seconds": result.train_seconds,
            "epochs_run": result.epochs_run,
        }
        if _best_so_far(trial.study, result.best_val_loss):
            storage.upload_folder(out, storage.join(folder, MODEL))
            trial.set_user_attr(MODEL, storage.join(folder, MODEL))
    return result.best_val_loss


def _report(trial, row: dict, epochs: list) -> None:
    import optuna

    epochs.append(row)
    trial.report(row["val_loss"], row["epoch"])
    if trial.should_prune():
        raise optuna.TrialPruned(f"epoch {row['epoch']}: val loss {row['val_loss']:.4f}")


def _best_so_far(study, value: float) -> bool:
    from optuna.trial import TrialState

    done = [t.value for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    return all(value < other for other in done)


def trial_line(number: int, params: dict, base: dict, outcome: dict) -> str:
    """One line a person reads per trial: what differs from the defaults, the validation loss, the outcome."""
    changed = params_text({key: value for key, value in params.items() if value != base.get(key)})
    loss = f"val loss {outcome['val_loss']:.4f}" if "val_loss" in outcome else "no val loss"
    state = (
        f"pruned after epoch {outcome['pruned_at_epoch']}"
        if outcome["state"] == "pruned"
        else f"val accuracy {outcome['val_accuracy']:.2%}"
        if outcome["state"] == "complete"
        else f"failed ({outcome['error']})"
        if outcome["state"] == "failed"
        else outcome["state"]
    )
    return f"trial {number:>3}: {changed or 'the defaults'}: {loss}, {state} ({outcome.get('seconds', 0):.0f} s)"


def select(cfg: LifecycleConfig, study, url: str, out_dir: str) -> tuple[Sweep, LifecycleConfig]:
    """The complete trial with the lowest validation loss: its model into out_dir (with the study's account,
    handoff.SWEEP_ACCOUNT), and its config."""
    from optuna.trial import TrialState

    from components.handoff import SWEEP_ACCOUNT, rehome_train_result

    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if MODEL in t.user_attrs]
    finished = finished_trials(study)
    if not complete:
        failed = [t for t in finished if t.state == TrialState.FAIL]
        why = (
            f"; trial {failed[-1].number} failed: {failed[-1].system_attrs.get('fail_reason', 'see the log')}"
            if failed
            else ""
        )
        raise SweepError(f"the sweep {study.study_name} has no complete trial among {len(finished)} finished{why}")
    winner = min(complete, key=lambda t: t.value)
    storage.download_folder(winner.user_attrs[MODEL], out_dir)
    result = rehome_train_result(out_dir)
    defaults_trial = next((t for t in finished if t.user_attrs.get(DEFAULTS)), None)
    sweep = Sweep(
        study=study.study_name,
        storage=hide_password(url),
        space=space_as_given(cfg),
        trials=len(finished),
        complete=sum(t.state == TrialState.COMPLETE for t in finished),
        pruned=sum(t.state == TrialState.PRUNED for t in finished),
        failed=sum(t.state == TrialState.FAIL for t in finished),
        winner=winner.number,
        winner_params=dict(winner.params),
        defaults_trial=defaults_trial.number if defaults_trial else None,
        best_val_loss=winner.value,
        best_val_accuracy=result.best_val_accuracy,
        defaults_val_loss=defaults_trial.value if defaults_trial and defaults_trial.value is not None else None,
    )
    write_json(out_dir, SWEEP_ACCOUNT, sweep.to_dict())
    return sweep, trial_config(cfg, winner.params)


def hide_password(url: str) -> str:
    """A database URL as it may be shown and logged."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL SQLAlchemy reads: shown as given, since it holds no credentials it can parse
        return url
