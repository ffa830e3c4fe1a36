"""The bundled Brightwave knowledge base and the end-to-end demo."""

from pathlib import Path

HERE = Path(__file__).resolve().parent
KB_DIR = HERE / "kb"
KB_UPDATES_DIR = HERE / "kb_updates"
QA_FILE = HERE / "qa.jsonl"
UPDATES_FILE = HERE / "updates.jsonl"
