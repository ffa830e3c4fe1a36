"""Starting the private local Ray cluster: a failed start is retried once, then named."""

import pytest

import ray
from ragtune.runtime import init_ray


def test_a_node_that_times_out_at_startup_is_retried_once(monkeypatch):
    calls = []

    def flaky_init(**kwargs):
        calls.append(kwargs)
        if len(calls) == 1:  # what Ray raises when its raylet misses the 30 s registration window
            raise Exception("The current node timed out during startup.")

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", flaky_init)
    init_ray()
    assert len(calls) == 2 and calls[1]["address"] == "local"


def test_a_cluster_that_never_starts_is_a_clear_error(monkeypatch):
    def failing_init(**kwargs):
        raise Exception("The current node timed out during startup.")

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", failing_init)
    with pytest.raises(RuntimeError, match="could not start a local Ray cluster .*timed out.*set RAY_ADDRESS"):
        init_ray()
