"""LoRA fine-tuning on Ray Train with DeepSpeed and PEFT."""

from ragtune.train.driver import TrainResult, TrainSetupError, merge_adapter, run_train
from ragtune.train.lora import LoraTargetError

__all__ = ["LoraTargetError", "TrainResult", "TrainSetupError", "merge_adapter", "run_train"]
