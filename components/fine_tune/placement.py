"""How stage 4 runs: in the task's own process, in several processes on its machine (DDP), or in a Kubeflow
Trainer TrainJob on several nodes. A pure decision: the adapter only carries it out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from components.decision import Decision

Where = Literal["in_process", "processes", "train_job"]


@dataclass(frozen=True)
class Placement:
    where: Where
    processes: int  # ranks on this machine, or on each node of a TrainJob


def decide_placement(
    nodes: int, processes: int | None, device: str, gpus: int, private: bool = False
) -> Decision[Placement]:
    """`nodes` (train.nodes) > 1 trains in a TrainJob; else `processes` (train.processes, default one rank per GPU
    of `gpus` (kfp.gpu.count) on a CUDA device, one elsewhere) > 1 trains under torchrun. `private`
    (train.privacy) trains in the task's process."""
    if private:
        return Decision(Placement("in_process", 1), "in the task's process (train.privacy: DP-SGD in one process)")
    ranks = processes or (gpus if device == "cuda" else 1) or 1
    origin = (
        f"train.processes={processes}"
        if processes
        else f"one per GPU of kfp.gpu.count={gpus}"
        if device == "cuda" and gpus
        else "one on this device"
    )
    if nodes > 1:
        return Decision(
            Placement("train_job", ranks),
            f"train.nodes={nodes}: a TrainJob of {nodes} nodes, {ranks} ranks each ({origin})",
        )
    if ranks > 1:
        return Decision(Placement("processes", ranks), f"{ranks} ranks under torchrun with DDP ({origin})")
    return Decision(Placement("in_process", 1), f"in the task's process ({origin})")
