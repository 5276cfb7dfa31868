"""Seeds and threads, set the same way in every process that draws random numbers or trains: stage 3 resolves
them, and stage 4, its ranks and a sweep's workers apply them."""

from __future__ import annotations

import random


def seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def apply_environment(threads: int, seed: int) -> None:
    """The threads stage 3 chose and the run's seed, in this process."""
    import torch

    torch.set_num_threads(threads)
    seed_everything(seed)
