"""training_report.json and loss_curve.png of a finished run."""

from __future__ import annotations

import json
from pathlib import Path

from ragtune.config import RagtuneConfig
from ragtune.train.state import TrainState

REPORT_FILE = "training_report.json"
CURVE_FILE = "loss_curve.png"


def report_config(cfg: RagtuneConfig) -> dict:
    """The settings an adapter depends on, as the report records them."""
    return cfg.model_dump(mode="json", include={"generator", "train", "prepare"})


def write_report(target: Path, cfg: RagtuneConfig, state: TrainState, stats: dict, *, wall_seconds: float,
                 total_steps: int, use_gpu: bool, cpus_per_worker: float, export_check: dict, checkpoint_path: str) -> dict:
    """Write the report and the loss curve into ``target``; returns the report."""
    t = cfg.train
    device_hours = wall_seconds * t.num_workers / 3600
    report = {
        "run_name": t.run_name,
        "model": stats["model"],
        "dataset": {k: stats[k] for k in ("output_dir", "fingerprint", "rows", "tokens", "label_tokens")},
        "steps": state.step,
        "planned_steps": total_steps,
        "epochs_completed": state.epoch,
        "tokens": state.tokens,
        "train_seconds": round(state.train_seconds, 2),
        "tokens_per_second": round(state.tokens / state.train_seconds, 2) if state.train_seconds else None,
        "wall_seconds": round(wall_seconds, 2),
        "gpu_hours": round(device_hours, 4) if use_gpu else 0.0,
        "cpu_hours": round(wall_seconds * t.num_workers * cpus_per_worker / 3600, 4),
        "workers": t.num_workers,
        "device": "cuda" if use_gpu else "cpu",
        "first_loss": state.loss[0]["loss"] if state.loss else None,
        "final_loss": state.loss[-1]["loss"] if state.loss else None,
        "loss_curve": state.loss,
        "validation": state.validation,
        "attempts": state.attempts,
        "export_check": export_check,
        "checkpoint": checkpoint_path,
        "config": report_config(cfg),
    }
    (target / REPORT_FILE).write_text(json.dumps(report, indent=2))
    plot_loss(state, target / CURVE_FILE, t.run_name)
    return report


def plot_loss(state: TrainState, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    if state.loss:
        ax.plot([p["step"] for p in state.loss], [p["loss"] for p in state.loss], label="train loss", linewidth=1)
    if state.validation:
        ax.plot([p["step"] for p in state.validation], [p["loss"] for p in state.validation], "o-", label="validation loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
