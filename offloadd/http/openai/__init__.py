"""OpenAI-shaped endpoints: Chat Completions and the Responses API."""
