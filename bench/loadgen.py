"""The load client and the in-process limit every part of the bench uses, imported from this one place."""

from inferd.tools import bench as inprocess  # noqa: F401  (the in-process limit, paired turns)
from inferd.tools import loadclient as loadgen  # noqa: F401  (request bodies, run_load, summarise)
