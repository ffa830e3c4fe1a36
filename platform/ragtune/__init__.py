"""ragtune: RAG or fine-tuning? Measure it on your own data, on Ray."""

import os

# OpenMP threads that spin while waiting take the CPU from the thread they wait for when the machine
# is busy: Ray runs workers at niceness 15, and generating on 2 threads beside one busy core took
# 29× its quiet time (1.8× with passive waits; 1.3× slower on a quiet machine — BENCHMARKS.md).
# Set before torch loads OpenMP in any process that imports ragtune first, and inherited by the
# workers of a local Ray cluster started from it; a value the user set wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
