"""API keys, plans and quotas: the `KeyStore` protocol and its SQLite and PostgreSQL stores."""
