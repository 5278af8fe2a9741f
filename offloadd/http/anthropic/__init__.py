"""Anthropic-shaped endpoints: the Messages API."""
