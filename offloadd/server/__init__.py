"""The process: listening sockets, workers, the connection guard, the access log."""
