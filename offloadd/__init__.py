"""offloadd: a self-hosted OffloadGPT."""

__version__ = "0.1.0"
