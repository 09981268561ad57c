"""Operating inferd: the daemon's lifecycle, configuration, systemd, metrics and alerts, the benchmarks."""
