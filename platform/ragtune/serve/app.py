"""``build_app(args)``: the application a Serve config's ``import_path`` names.

``args`` holds ragtune config sections (``milvus``, ``embedding``, ``search``, ``generator``,
``serve``), validated like any ragtune YAML; each deployment's resources, replicas and queue
limits are set in the Serve config's ``deployments`` list (Ray's own schema).
"""

from __future__ import annotations

from typing import Any

from ragtune.config import validate_config
from ragtune.serve.deployments import Embedder, Generator, Retriever
from ragtune.serve.ingress import Ingress


def build_app(args: dict[str, Any] | None = None):
    """Ingress → (Retriever → Embedder, Generator).

    Raises:
        ConfigError: ``args`` has an unknown key or an invalid value (checked before any replica starts).
    """
    args = args or {}
    validate_config(args, "the Serve application's args")
    retriever = Retriever.bind(args, Embedder.bind(args))
    return Ingress.bind(args, retriever, Generator.bind(args))
