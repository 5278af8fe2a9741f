"""Use cases over requests: create, run, end, read; no HTTP routing here."""
