"""Serving: the request batcher, streaming, the OpenAI-compatible API and its typed request, the web page and
the server that holds them together."""
