"""``ponder serve``: an OpenAI-compatible server that answers by searching.

All live requests share one engine; requests with the same search settings share one search
session, and a request that arrives mid-search joins the next round (step-level continuous
batching). Needs the ``serve`` extra (``pip install 'ponder[serve]'``: FastAPI + uvicorn).

    from ponder.serve import build_backend, create_app
    app = create_app(build_backend(model=None, max_kv_bytes=256 << 20))   # the bundled Countdown model

See :mod:`ponder.serve.protocol` for the request's ``ponder`` field and
:mod:`ponder.serve.app` for the endpoints and the streaming format.
"""

from __future__ import annotations

from ponder.serve.backend import Backend, build_backend
from ponder.serve.errors import APIError

__all__ = ["APIError", "Backend", "build_backend", "create_app", "run"]


def create_app(backend: Backend):
    """The FastAPI app for ``backend`` (see :func:`ponder.serve.app.create_app`)."""
    from ponder.serve.app import create_app as _create

    return _create(backend)


def run(backend: Backend, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info") -> None:
    """Serve ``backend`` with uvicorn until interrupted (SIGINT / SIGTERM)."""
    import uvicorn

    config = uvicorn.Config(create_app(backend), host=host, port=port, log_level=log_level)
    uvicorn.Server(config).run()
