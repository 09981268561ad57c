"""Command-line tools that are not the daemon: `inferd-bench` (a load generator) and `inferd-reload`
(systemd's ExecReload). They talk to a running daemon; the daemon never imports them."""
