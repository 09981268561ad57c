"""Command-line tools that are not the daemon: `inferd-bench` (a load generator), `inferd-reload`
(systemd's ExecReload) and `inferd-keys` (the API keys file). The daemon never imports them."""
