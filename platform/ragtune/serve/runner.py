"""``ragtune serve``: run a Serve config file on ragtune's Ray (the local cluster, or $RAY_ADDRESS),
the way ``serve run config.yaml`` does, after validating ragtune's part of it."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from ragtune.config import ConfigError, apply_overrides, read_yaml_mapping, validate_config

DEFAULT_CONFIG = Path(__file__).resolve().parents[3] / "serve_configs" / "local.yaml"


def load_serve_config(path: str | Path, overrides: list[str] | None = None):
    """The file as Ray's ``ServeDeploySchema``, each ragtune application's ``args`` validated after
    ``overrides`` (``key.sub=value``, e.g. ``milvus.collection=quickstart``) are applied to them.

    Raises:
        ConfigError: the file is missing or invalid (the message names the file and the key).
    """
    from pydantic import ValidationError
    from ray.serve.schema import ServeDeploySchema

    raw = read_yaml_mapping(path, "serve config")
    try:
        schema = ServeDeploySchema.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"serve config {path} does not match Ray Serve's schema: {exc}") from None
    for i, application in enumerate(schema.applications):
        if application.import_path.startswith("ragtune."):
            application.args = apply_overrides(dict(application.args or {}), overrides or [])
            source = f"{path} applications[{i}].args" + (f" with --set {' '.join(overrides)}" if overrides else "")
            validate_config(application.args, source)
    return schema


def run_serve(path: str | Path, overrides: list[str] | None = None, timeout_s: float = 600) -> dict[str, Any]:
    """Deploy the config's applications (``overrides`` applied to ragtune's ``args``) and wait until
    they are RUNNING. Returns the HTTP options.

    Raises:
        ConfigError: see ``load_serve_config``.
        RuntimeError: an application failed to deploy (with Serve's message) or timed out.
    """
    from ray import serve
    from ray.serve._private import api as serve_api  # what `serve run config.yaml` calls
    from ray.serve.config import gRPCOptions

    from ragtune.runtime import init_ray

    schema = load_serve_config(path, overrides)
    init_ray()
    client = serve_api.serve_start(http_options=schema.http_options.model_dump(), proxy_location=schema.proxy_location,
                                   grpc_options=gRPCOptions(**schema.grpc_options.model_dump()),
                                   controller_options=schema.controller_options)
    client.deploy_apps(schema, _blocking=False)
    deadline = time.monotonic() + timeout_s
    while True:
        apps = serve.status().applications
        states = {a.name: apps[a.name] if a.name in apps else None for a in schema.applications}
        failed = {n: s.message for n, s in states.items() if s and s.status in ("DEPLOY_FAILED", "UNHEALTHY")}
        if failed:
            raise RuntimeError(f"serve config {path}: " + "; ".join(f"{n}: {m}" for n, m in failed.items()))
        if all(s and s.status == "RUNNING" for s in states.values()):
            return schema.http_options.model_dump()
        if time.monotonic() > deadline:
            raise RuntimeError(f"serve config {path}: not RUNNING after {timeout_s:.0f} s: "
                               + ", ".join(f"{n}={s.status if s else 'missing'}" for n, s in states.items()))
        time.sleep(1)


def stop_serve(path: str | Path) -> None:
    """Undo ``run_serve`` of the config at ``path``: on a cluster someone else runs ($RAY_ADDRESS)
    only its applications are deleted; a private local cluster goes down whole with
    ``ray.shutdown()``, which ends the controller, proxies and replicas at once: Ctrl-C does not
    wait on Serve's graceful drain."""
    import os

    import ray

    if not ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        from ray import serve

        for application in load_serve_config(path).applications:
            serve.delete(application.name)
    ray.shutdown()
