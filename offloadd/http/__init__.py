"""HTTP: the app factory, its route table, middleware, and the endpoints (the original's
in `native`, OpenAI's in `openai/`), each translating HTTP to a use case in `requests`."""
