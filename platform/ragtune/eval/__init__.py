"""Evaluation: retrieval quality on BEIR-format datasets (answer-level comparison comes later)."""
