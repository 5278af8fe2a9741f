"""The rules and documents of offloaded requests, knowing nothing of HTTP or sockets."""
