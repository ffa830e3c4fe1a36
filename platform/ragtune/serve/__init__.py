"""Ray Serve: the retriever + generator graph behind an OpenAI-compatible API (see app.build_app)."""
