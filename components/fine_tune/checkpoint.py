"""Stage 4's resumable checkpoints: the last epoch's trainable weights, the best weights, optimizer and scheduler
state, in a local folder or at a storage URI."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

LATEST = "LATEST"  # in a remote checkpoint folder: the name of the newest complete checkpoint


@dataclass
class TrainingState:
    epoch: int = 0
    best_epoch: int = 0
    best_val_loss: float = float("inf")
    epochs_without_improvement: int = 0
    history: list = field(default_factory=list)


class Checkpoint:
    """The last epoch's trainable weights, the best weights (safetensors), optimizer and scheduler state.

    Kept in a local folder. With a remote URI (an object store) the folder is this process's scratch space, and
    each checkpoint is uploaded whole to `URI/epoch-NNNN/` before `URI/LATEST` names it, so a reader never sees
    half a checkpoint and a run resumes from another machine."""

    def __init__(self, uri: str):
        import tempfile

        from components.storage import local_path

        local = local_path(uri)
        self.remote = None if local is not None else uri
        self._scratch = None if local is not None else tempfile.TemporaryDirectory(prefix="lifecycle-checkpoint-")
        self.root = local if local is not None else Path(self._scratch.name) / "checkpoint"

    def save(self, model, optimizer, scheduler, state: TrainingState, improved: bool) -> None:
        import torch
        from safetensors.torch import save_file

        tmp = self.root.with_name(self.root.name + ".tmp")
        if tmp.exists():  # left by a run that died while saving
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        save_file(_trainable_state(model), tmp / "last.safetensors")
        # The best weights are this epoch's or those of the previous checkpoint: a link, where the disk allows.
        best = tmp / "last.safetensors" if improved else self.root / "best.safetensors"
        try:
            os.link(best, tmp / "best.safetensors")
        except OSError:  # a filesystem without hard links
            shutil.copyfile(best, tmp / "best.safetensors")
        torch.save(
            {
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            },
            tmp / "optim.pt",
        )
        (tmp / "state.json").write_text(json.dumps(asdict(state)))
        # Replace the old checkpoint only once the new one is complete.
        if self.root.exists():
            shutil.rmtree(self.root)
        tmp.rename(self.root)
        if self.remote:
            self._upload(f"epoch-{state.epoch:04d}")

    def _upload(self, name: str) -> None:
        from components import storage

        previous = self._latest()
        storage.upload_folder(self.root, storage.join(self.remote, name))
        storage.write_bytes(storage.join(self.remote, LATEST), name.encode())
        if previous and previous != name:
            storage.remove(storage.join(self.remote, previous))

    def _latest(self) -> str | None:
        """The newest complete checkpoint at the remote URI, or None."""
        from components import storage

        latest = storage.join(self.remote, LATEST)
        return storage.read_bytes(latest).decode().strip() if storage.exists(latest) else None

    def load(self, model, optimizer, scheduler) -> TrainingState | None:
        import torch
        from safetensors.torch import load_file

        from components import storage

        latest = self._latest() if self.remote else None
        if latest:
            storage.download_folder(storage.join(self.remote, latest), self.root)
        if not (self.root / "state.json").is_file():
            return None
        model.load_state_dict(load_file(self.root / "last.safetensors"), strict=False)
        optim = torch.load(self.root / "optim.pt", weights_only=True)
        optimizer.load_state_dict(optim["optimizer"])
        scheduler.load_state_dict(optim["scheduler"])
        torch.set_rng_state(optim["rng"])
        if optim["cuda_rng"]:
            torch.cuda.set_rng_state_all(optim["cuda_rng"])
        return TrainingState(**json.loads((self.root / "state.json").read_text()))

    def best_weights(self) -> dict:
        from safetensors.torch import load_file

        return load_file(self.root / "best.safetensors")


def _trainable_state(model) -> dict:
    return {n: p.detach().to("cpu").contiguous() for n, p in model.named_parameters() if p.requires_grad}
