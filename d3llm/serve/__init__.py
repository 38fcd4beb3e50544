"""An OpenAI-compatible HTTP server over the step-wise :class:`d3llm.Engine` (``d3llm serve``).

* :mod:`~d3llm.serve.protocol`: request validation, response and chunk shapes, OpenAI's error object;
* :mod:`~d3llm.serve.text`: committed tokens to sendable text (stop strings, incomplete UTF-8, ``max_tokens``);
* :mod:`~d3llm.serve.worker`: the engine thread, the only code that touches the engine;
* :mod:`~d3llm.serve.metrics`: Prometheus metrics;
* :mod:`~d3llm.serve.app`: the FastAPI app (endpoints, streaming, disconnects, API key, limits).

Needs the ``serve`` extra (``pip install 'd3llm[serve]'``: FastAPI, uvicorn, prometheus-client).
"""
