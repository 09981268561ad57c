"""The HTTP layer: heads, routing, bodies, connections, caps and slow clients, admin."""
