"""The load generator every part of the bench uses, imported from this one place.

inferd's `inferd-bench` (inferd/bench.py) is moving to inferd/tools/bench.py; only the line below
changes then.
"""

from inferd import bench as loadgen  # noqa: F401
