"""Connecting to Ray: the cluster named by $RAY_ADDRESS (set by `ray job submit`), else a
private local cluster bound to 127.0.0.1."""

from __future__ import annotations

import os


def init_ray() -> None:
    """Join ``$RAY_ADDRESS`` or start a local cluster on loopback; once per process."""
    import ray

    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init(configure_logging=True, logging_level="WARNING")
    else:
        ray.init(address="local", _node_ip_address="127.0.0.1", include_dashboard=False,
                 configure_logging=True, logging_level="WARNING")
