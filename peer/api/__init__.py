"""The user API: OpenAI-compatible handlers against a small `Backend` protocol (`handlers`),
request and response shapes (`schemas`), and a standard-library client (`client`, which the
commands use without importing torch)."""
