"""Serving a bundle: the OpenAI-compatible HTTP server (`phi4edge serve`, needs the `serve` extra)
and the terminal chat (`phi4edge chat`), both on one engine (engine.py) over the public
`Model.stream` API, with the prompt cache and grammar-constrained JSON output."""
