"""Evaluation: retrieval quality on BEIR-format datasets, and base / rag / ft / hybrid compared on the same questions."""
