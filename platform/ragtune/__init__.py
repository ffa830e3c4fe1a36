"""ragtune: RAG or fine-tuning? Measure it on your own data, on Ray."""

__version__ = "0.1.0"
