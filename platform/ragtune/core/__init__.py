"""Pure-Python building blocks (no ray, torch, pymilvus or transformers imports)."""
