"""`fastcot serve`: an OpenAI-compatible HTTP server over `LLMEngine` (needs `fastcot[serve]`).

`serve.py` parses the command line, `app.py` builds the engine and the application,
`api_server.py` holds the routes, `serving.py` turns requests into engine requests and
responses, `async_engine.py` runs the engine in its own thread, `engine_outputs.py` reads its
per-step outputs, `protocol.py` has the OpenAI types, `params.py` the request checks,
`metrics.py` the Prometheus metrics, `sse.py` and `errors.py` the wire formats. See
docs/serving.md.
"""
