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


def save_rng_state(path: Path) -> None:
    """This process's Python, NumPy, torch (and CUDA) RNG states as JSON: nothing to unpickle when
    a run resumes from checkpoint storage that others can write to."""
    import numpy as np
    import torch

    kind, keys, position, has_gauss, gauss = np.random.get_state()
    version, python_state, python_gauss = random.getstate()
    state = {"python": [version, list(python_state), python_gauss],
             "numpy": [kind, keys.tolist(), position, has_gauss, gauss],
             "torch": torch.get_rng_state().tolist()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state().tolist()
    path.write_text(json.dumps(state))


def load_rng_state(path: Path) -> None:
    """Restore the RNG states written by :func:`save_rng_state`."""
    import numpy as np
    import torch

    state = json.loads(path.read_text())
    version, python_state, python_gauss = state["python"]
    random.setstate((version, tuple(python_state), python_gauss))
    kind, keys, position, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), position, has_gauss, gauss))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(torch.tensor(state["cuda"], dtype=torch.uint8))
