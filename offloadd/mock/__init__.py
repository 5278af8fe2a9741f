"""The built-in mock upstream (Chat Completions and Responses): an external server as far as
offloadd is concerned, importing nothing of its server modules."""
