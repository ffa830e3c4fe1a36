"""The bundled Brightwave knowledge base and the end-to-end demo."""

from pathlib import Path

KB_DIR = Path(__file__).resolve().parent / "kb"
