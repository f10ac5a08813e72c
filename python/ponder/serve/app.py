"""The HTTP side: an OpenAI-compatible FastAPI app in front of the :class:`Scheduler`.

Endpoints: ``POST /v1/chat/completions``, ``POST /v1/completions``, ``GET /v1/models``,
``GET /health`` and ``GET /v1/ponder/stats`` (KV pages in use, live sequences, queue lengths).
Handlers only parse, tokenize and wait: the search runs on the scheduler thread.

Streaming (``"stream": true``) sends server-sent events. While the search runs, each chunk's
``ponder`` field carries the best answer so far of a prompt whenever it changes (``delta`` stays
empty, so a client that concatenates deltas gets exactly the final text); then one chunk per
choice with the final answer as ``delta.content`` and its ``finish_reason``, a usage chunk
(with ``stream_options.include_usage``) and ``data: [DONE]``. A client that disconnects cancels
its search, which frees its KV.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Dict

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException

from ponder.serve import answers
from ponder.serve.backend import Backend
from ponder.serve.errors import APIError
from ponder.serve.protocol import ParsedRequest, parse_chat, parse_completion
from ponder.serve.scheduler import Job, Scheduler

logger = logging.getLogger(__name__)

DISCONNECT_POLL_S = 0.25  # how often a non-streamed request checks that its client is still there


def create_app(backend: Backend):
    """The FastAPI app serving ``backend``; its scheduler thread runs while the app is up."""
    scheduler = Scheduler(backend)
    d = backend.defaults

    @asynccontextmanager
    async def lifespan(app):
        scheduler.start()
        try:
            yield
        finally:
            await asyncio.get_running_loop().run_in_executor(None, scheduler.shutdown)

    app = FastAPI(title="ponder", lifespan=lifespan)
    app.state.scheduler = scheduler

    @app.exception_handler(APIError)
    async def _api_error(request, err: APIError):
        return JSONResponse(err.body(), status_code=err.status)

    @app.exception_handler(HTTPException)
    async def _http_error(request, err: HTTPException):
        kind = "invalid_request_error" if err.status_code < 500 else "server_error"
        body = APIError(f"{request.method} {request.url.path}: {err.detail}", status=err.status_code, type=kind,
                        code="not_found" if err.status_code == 404 else None).body()
        return JSONResponse(body, status_code=err.status_code)

    @app.exception_handler(Exception)
    async def _unexpected(request, err: Exception):
        logger.exception("unhandled error")
        body = APIError("internal server error; see the server log", status=500, type="server_error",
                        code="internal_error").body()
        return JSONResponse(body, status_code=500)

    async def body_of(request: Request) -> Any:
        raw = await request.body()
        try:
            return json.loads(raw)
        except ValueError as err:
            raise APIError(f"body: the request body is not valid JSON ({err})", param="body",
                           code="invalid_json") from None

    async def serve(request: Request, req: ParsedRequest):
        token_lists, problems = backend.encode(req)
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()

        def sink(event: tuple) -> None:  # called on the scheduler thread
            try:
                loop.call_soon_threadsafe(events.put_nowait, event)
            except RuntimeError:  # the event loop has closed: nobody is waiting any more
                pass

        job = Job(req, token_lists, problems, sink)
        rid = ("chatcmpl-" if req.kind == "chat" else "cmpl-") + uuid.uuid4().hex[:24]
        created = int(time.time())
        prompt_tokens = sum(len(t) for t in token_lists)
        scheduler.submit(job)
        if req.stream:
            return StreamingResponse(_stream(job, events, rid, created, prompt_tokens), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})
        try:
            while True:
                try:
                    kind, *rest = await asyncio.wait_for(events.get(), DISCONNECT_POLL_S)
                except asyncio.TimeoutError:
                    if await request.is_disconnected():
                        scheduler.cancel(job)
                        return JSONResponse({}, status_code=499)
                    continue
                if kind == "error":
                    raise rest[0]
                if kind == "done":
                    make = answers.chat_body if req.kind == "chat" else answers.completion_body
                    return JSONResponse(make(rid, created, req.model, *rest[0]))
        except asyncio.CancelledError:
            scheduler.cancel(job)
            raise

    async def _stream(job: Job, events: asyncio.Queue, rid: str, created: int, prompt_tokens: int
                      ) -> AsyncIterator[str]:
        req = job.req
        chat = req.kind == "chat"
        obj = "chat.completion.chunk" if chat else "text_completion"

        def chunk(choices, **extra) -> str:
            body = {"id": rid, "object": obj, "created": created, "model": req.model, "choices": choices, **extra}
            return f"data: {json.dumps(body)}\n\n"

        def choice(index: int, text, reason) -> Dict[str, Any]:
            if chat:
                delta = {} if text is None else {"role": "assistant", "content": text}
                return {"index": index, "delta": delta, "finish_reason": reason, "logprobs": None}
            return {"index": index, "text": text or "", "finish_reason": reason, "logprobs": None}

        done = False
        try:
            while True:
                kind, *rest = await events.get()
                if kind == "progress":
                    i, info = rest
                    yield chunk([choice(i * req.n, None, None)], ponder={"event": "progress", **info})
                elif kind == "error":
                    done = True
                    yield f"data: {json.dumps(rest[0].body())}\n\n"
                    yield "data: [DONE]\n\n"
                    return
                else:
                    done = True
                    choices, usage, report = rest[0]
                    for index, text, reason in choices:
                        yield chunk([choice(index, text, reason)])
                    final = {"ponder": {"event": "done", **report}}
                    if req.include_usage:
                        yield chunk([], usage=usage, **final)
                    else:
                        yield chunk([], **final)
                    yield "data: [DONE]\n\n"
                    return
        finally:
            if not done:  # the client went away mid-search
                scheduler.cancel(job)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        return await serve(request, parse_chat(await body_of(request), d))

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await serve(request, parse_completion(await body_of(request), d))

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": d.model_id, "object": "model", "created": 0, "owned_by": "ponder",
                                            "max_context": d.max_context}]}

    async def stats() -> Dict[str, Any]:
        return await asyncio.wrap_future(scheduler.call(scheduler.stats))

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": d.model_id, **(await stats())}

    @app.get("/v1/ponder/stats")
    async def ponder_stats():
        return {**(await stats()), "defaults": {"algorithm": d.algorithm, "scorer": d.scorer, "scorers": list(d.scorers),
                                               "task": d.task, "step_delimiter": d.step_delimiter}}

    return app
