"""The model call. This package re-exports nothing: import from its modules."""
