"""What a training run carries across restarts: progress, data position, curves, and RNG."""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

STATE_FILE = "trainer_state.json"


@dataclass
class TrainState:
    """Progress of a run; saved with every checkpoint, so a restart continues where it stopped."""

    step: int = 0
    epoch: int = 0
    micro_batches_in_epoch: int = 0
    tokens: int = 0
    train_seconds: float = 0.0
    loss: list[dict] = field(default_factory=list)        # {step, loss, lr}
    validation: list[dict] = field(default_factory=list)  # {step, loss, perplexity}
    attempts: list[dict] = field(default_factory=list)    # {resumed_from_step, recomputed_steps}

    def save(self, directory: Path) -> None:
        (directory / STATE_FILE).write_text(json.dumps(asdict(self), indent=1))

    @classmethod
    def load(cls, directory: Path) -> "TrainState":
        return cls(**json.loads((directory / STATE_FILE).read_text()))


def rng_state() -> dict:
    import numpy as np
    import torch

    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    import numpy as np
    import torch

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
