"""The load generator every part of the bench uses, imported from this one place."""

from inferd.tools import bench as loadgen  # noqa: F401
