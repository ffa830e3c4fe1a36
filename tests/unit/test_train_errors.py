"""A training failure as the user can act on it (ragtune.train.driver.explained)."""

from ragtune.train import TrainSetupError
from ragtune.train.driver import explained

# what Ray 2.60 raised when two SmolLM2 workers on 512-token rows of 8 took 10 GB each on a 24 GB machine
_KILLED = ("Training failed due to controller error:\n8 worker(s) were killed due to the node running low on memory. "
           "Memory on the node (IP: 192.0.2.2, ID: 4b5c16e1) was 22.67GB used / 23.54GB limit (0.962936)")


def test_workers_killed_for_memory_become_a_setup_error_naming_the_settings():
    error = RuntimeError(_KILLED)
    setup = explained(error)
    assert isinstance(setup, TrainSetupError) and setup.__cause__ is error
    assert "(22.67GB of 23.54GB in use)" in str(setup)
    assert "train.micro_batch_size" in str(setup) and "prepare.max_length" in str(setup)
    other = RuntimeError("a worker raised ValueError")
    assert explained(other) is other
