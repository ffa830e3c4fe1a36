"""Connecting to Ray: the cluster of `ray job submit` ($RAY_ADDRESS) or a local one."""

from __future__ import annotations


def init_ray() -> None:
    """Start or join Ray once per process; a local cluster when no address is configured."""
    import ray

    if not ray.is_initialized():
        ray.init(include_dashboard=False, configure_logging=True, logging_level="WARNING")
