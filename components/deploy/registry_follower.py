"""A server started on models:/NAME@ALIAS follows the registry: every `serve.follow_seconds` it reads the model's
aliases (one call) and, when the alias or a rollout's candidate moved, downloads and loads the new version, warms
it, and only then swaps it in; requests in flight finish on what they started with. A registry that cannot be
reached changes nothing: the server keeps serving what it has and says so in its log and its metrics.

Polling rather than MLflow's registry webhooks: behind a KServe Service a webhook reaches one replica, and every
replica must follow; one small registry read per replica every few seconds costs nothing a server notices."""

from __future__ import annotations

import functools
import hashlib
import logging
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from components.registry import CANDIDATE, CHAMPION, rollout_settings

log = logging.getLogger(__name__)
WARM_TEXT = "warming up the model before it answers"
RETRY_SECONDS = 60  # a registry state whose versions could not be loaded is tried again after this


@dataclass(frozen=True)
class Loaded:
    version: str
    model: object  # an OnnxClassifier, or a generator's runtime handle (components/deploy/generator_runtime.py)
    download: Path | None = None  # where it was downloaded, removed when it is unloaded


@dataclass(frozen=True)
class Served:
    """What answers now: the champion and, during a rollout, the candidate with its mode and share."""

    champion: Loaded
    candidate: Loaded | None = None
    mode: str = "direct"
    canary_percent: float = 0.0

    def route(self, key: str) -> tuple[Loaded, Loaded | None]:
        """(the version that answers the request, the one that scores a copy off the answer path or None). In a
        canary the champion also scores the candidate's requests, so that the two are compared on the same texts."""
        if self.candidate is None:
            return self.champion, None
        if self.mode == "canary":
            return (self.candidate, self.champion) if in_canary(key, self.canary_percent) else (self.champion, None)
        return self.champion, self.candidate


def warm_classifier(classifier) -> None:
    classifier.probabilities([WARM_TEXT])


def in_canary(key: str, percent: float) -> bool:
    """Is the request with this key in the canary's share? A stable hash: the same key always gets the same answer,
    on every replica."""
    bucket = int.from_bytes(hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()[:8], "big") % 10_000
    return bucket < round(percent * 100)


@dataclass(frozen=True)
class RegistryView:
    champion: str  # the followed alias's version
    candidate: str | None = None
    mode: str = "direct"
    canary_percent: float = 0.0


def read_registry_view(client, name: str, alias: str) -> RegistryView:
    """The followed alias's version and, for @champion, a running rollout's candidate with its mode and share."""
    from components.registry import RegistryError

    aliases = client.get_registered_model(name).aliases
    if alias not in aliases:
        raise RegistryError(f"registered model {name!r} has no version with the alias {alias!r}")
    champion, candidate = str(aliases[alias]), aliases.get(CANDIDATE) if alias == CHAMPION else None
    if candidate is None or str(candidate) == champion:
        return RegistryView(champion)
    mode, percent, _ = rollout_settings(client.get_model_version(name, str(candidate)))
    return RegistryView(champion, str(candidate), mode, percent)


@functools.cache
def follower_metrics():
    """Prometheus: whether the last registry read worked, the versions served by role, the swaps made."""
    from prometheus_client import Counter, Gauge

    return (
        Gauge(
            "lifecycle_registry_reachable", "1 when the last read of the model registry worked, else 0", ["model_name"]
        ),
        Gauge(
            "lifecycle_served_version",
            "1 for each version served now, by role (champion or candidate)",
            ["model_name", "model_version", "role"],
        ),
        Counter("lifecycle_model_swaps", "Times the served versions changed without a restart", ["model_name"]),
    )


class Follower:
    """A daemon thread that keeps `served` (read by requests, replaced whole by `swap`) in step with the registry."""

    def __init__(
        self,
        name: str,
        alias: str,
        seconds: float,
        download_dir: str | Path,
        load: Callable[[str, Path], Loaded],
        served: Served,
        swap: Callable[[Served], None],
        warm: Callable[[object], None] = warm_classifier,
        discard: Callable[[object], None] = lambda model: None,
    ):
        self.name, self.alias, self.seconds, self.download_dir = name, alias, seconds, Path(download_dir)
        # discard: a model loaded for a swap that did not happen (a generator's engine thread must be closed; a
        # classifier's session goes with its last reference)
        self.load, self.served, self.swap, self.warm, self.discard = load, served, swap, warm, discard
        self.view = RegistryView(served.champion.version)
        self.failing: str | None = None  # what went wrong last time, said once
        self.unloadable: tuple[RegistryView | None, float] = (None, 0.0)  # a view that failed to load, and when
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="registry-follower", daemon=True)
        self._show(served)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while True:
            self.poll()
            if self._stop.wait(self.seconds):
                return

    def poll(self) -> None:
        """One read of the registry and, when it moved, one swap."""
        import mlflow

        from components.tracking import check_reachable

        reachable, _, _ = follower_metrics()
        try:
            check_reachable(mlflow.get_tracking_uri(), timeout=5)  # a server that is down: now, not after retries
            view = read_registry_view(mlflow.MlflowClient(), self.name, self.alias)
        except Exception as err:  # unreachable, or the alias gone: what serves now goes on serving
            reachable.labels(self.name).set(0)
            self._failed(
                f"the registry at {mlflow.get_tracking_uri()} cannot be read ({type(err).__name__}: "
                f"{str(err)[:200]}); still serving version {self.served.champion.version}"
            )
            return
        reachable.labels(self.name).set(1)
        failed, failed_at = self.unloadable
        if view != self.view and not (view == failed and time.monotonic() - failed_at < RETRY_SECONDS):
            try:
                self._follow(view)
            except Exception as err:  # a version that cannot be loaded is not served; tried again later
                self.unloadable = (view, time.monotonic())
                self._failed(
                    f"version {view.candidate if view.champion == self.view.champion else view.champion} "
                    f"of {self.name} cannot be loaded ({type(err).__name__}: {str(err)[:200]}); still "
                    f"serving version {self.served.champion.version}"
                )
                return
        if self.failing:
            log.info("the registry answers again; serving version %s", self.served.champion.version)
            self.failing = None

    def _follow(self, view: RegistryView) -> None:
        old = self.served
        loaded = {m.version: m for m in (old.champion, old.candidate) if m}
        fresh: list[Loaded] = []
        try:
            champion = loaded.get(view.champion) or self._loaded(view.champion, fresh)
            candidate = view.candidate and (loaded.get(view.candidate) or self._loaded(view.candidate, fresh))
        except Exception:  # what this attempt loaded is let go, or each retry would hold one more model
            for model in fresh:
                self.discard(model.model)
            raise
        new = Served(champion, candidate or None, view.mode, view.canary_percent)
        self.swap(new)  # requests that start from now on get `new`
        self.served, self.view = new, view
        _, _, swaps = follower_metrics()
        swaps.labels(self.name).inc()
        self._show(new, old)
        kept = {m.version for m in (new.champion, new.candidate) if m}
        for gone in (m for m in loaded.values() if m.version not in kept and m.download):
            shutil.rmtree(gone.download, ignore_errors=True)  # its session is in memory until the last request ends

    def _loaded(self, version: str, fresh: list[Loaded]) -> Loaded:
        model = self.load(version, self.download_dir)
        fresh.append(model)
        self.warm(model.model)  # the first inference pays for allocation; no client does
        return model

    def _show(self, new: Served, old: Served | None = None) -> None:
        _, serving, _ = follower_metrics()
        if old:
            for role, model in (("champion", old.champion), ("candidate", old.candidate)):
                if model:
                    serving.labels(self.name, model.version, role).set(0)
        for role, model in (("champion", new.champion), ("candidate", new.candidate)):
            if model:
                serving.labels(self.name, model.version, role).set(1)
        if old is None:
            return
        line = f"now serving version {new.champion.version} of {self.name}"
        if old.champion.version != new.champion.version:
            line += f" (was {old.champion.version})"
        if new.candidate:
            share = f" on {new.canary_percent:g}% of requests" if new.mode == "canary" else ""
            line += f"; candidate version {new.candidate.version} in {new.mode}{share}"
        elif old.candidate:
            line += f"; the rollout of version {old.candidate.version} ended"
        log.info(line)

    def _failed(self, why: str) -> None:
        if why != self.failing:
            log.warning(why)
            self.failing = why
