"""Real test doubles that users can run too (a scripted OpenAI-compatible HTTP server)."""
