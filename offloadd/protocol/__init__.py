"""Wire formats without I/O, shared by the writer, the upstream reader and the clients."""
