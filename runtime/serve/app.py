"""The OpenAI-compatible HTTP server: Starlette routes over the scheduler, run by uvicorn.

POST /v1/chat/completions (JSON or server-sent events), GET /v1/models, GET /health. Errors are
OpenAI-shaped ({"error": {"message", "type", "param", "code"}}) with the matching status: 400 bad
request, 401 missing/wrong key, 404 unknown model or route, 413 body too large, 415 not JSON,
429 queue full, 503 not started in time (and from uvicorn past its connection limit).
"""
from __future__ import annotations

import asyncio
import hmac
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from ...errors import RequestError
from ..generate import NO_ADAPTER
from .engine import Delta, Engine, Finished
from .protocol import ChatRequest, Limits, chunk, completion, completion_id, error_body, parse_chat, prepare, usage
from .scheduler import Failed, Job, Scheduler


@dataclass(frozen=True)
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 8080
    api_key: str | None = None
    max_queue: int = 8                 # requests waiting behind the running one; more get 429
    timeout_s: float = 300.0           # per request, waiting included; then cut (finish_reason "length")
    queue_timeout_s: float = 60.0      # waiting longer than this to start: 503
    max_body_bytes: int = 32 << 20     # base64 media included
    max_connections: int = 64          # uvicorn answers 503 past this many open connections
    prepare_threads: int = 2           # requests decoding media / compiling schemas at once
    limits: Limits = field(default_factory=Limits)


class ApiError(Exception):
    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", code: str | None = None,
                 headers: dict | None = None):
        super().__init__(message)
        self.status, self.body, self.headers = status, error_body(message, kind, code), headers


def _error(status: int, message: str, kind: str = "invalid_request_error", code: str | None = None) -> JSONResponse:
    return JSONResponse(error_body(message, kind, code), status_code=status)


def create_app(engine: Engine, settings: ServerSettings = ServerSettings(), model_id: str | None = None) -> Starlette:
    """The ASGI app for one loaded model. Model ids: MODEL (adapter routed by modality),
    MODEL:ADAPTER for each of the bundle's adapters, MODEL:none (the base model)."""
    model_id = model_id or Path(engine.model.bundle.path).name
    models = {model_id: None, **{f"{model_id}:{a}": a for a in [*engine.model.adapters, NO_ADAPTER]}}
    created = int(time.time())
    preparing = asyncio.Semaphore(settings.prepare_threads)
    scheduler: Scheduler | None = None

    @asynccontextmanager
    async def lifespan(app):
        nonlocal scheduler
        scheduler = Scheduler(engine, settings.max_queue)
        yield
        scheduler.close()

    def authorize(request: Request) -> None:
        if settings.api_key is None:
            return
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {settings.api_key}".encode()):
            raise ApiError(401, "missing or wrong API key (send Authorization: Bearer KEY)", code="invalid_api_key")

    async def read_json(request: Request) -> object:
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind != "application/json":
            raise ApiError(415, f"the body must be application/json, not '{kind or 'none'}'")
        limit = settings.max_body_bytes
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > limit:
            raise ApiError(413, f"the body is {int(length)} bytes; at most {limit}")
        body = bytearray()
        async for piece in request.stream():
            body += piece
            if len(body) > limit:
                raise ApiError(413, f"the body is over {limit} bytes")
        try:
            return json.loads(body)
        except (ValueError, RecursionError) as e:
            raise ApiError(400, f"the body is not valid JSON ({str(e)[:200]})") from None

    async def chat_completions(request: Request) -> Response:
        authorize(request)
        body = await read_json(request)
        try:
            parsed = parse_chat(body, models, settings.limits)
            async with preparing:
                turn = await run_in_threadpool(prepare, parsed, engine)
        except LookupError as e:
            raise ApiError(404, str(e), code="model_not_found") from None
        except RequestError as e:
            raise ApiError(400, str(e)) from None
        assert scheduler is not None
        now = time.monotonic()
        job = Job(turn, now + settings.queue_timeout_s, now + settings.timeout_s)
        if not scheduler.submit(job):
            raise ApiError(429, f"{settings.max_queue} requests are already waiting; retry shortly",
                           "rate_limit_error", "queue_full", headers={"Retry-After": "1"})
        watcher = asyncio.create_task(_watch_disconnect(request, job))
        streaming = False
        try:
            first = await job.events.get()
            if isinstance(first, Failed):
                return _error(first.status, first.message, first.kind, first.code)
            if not parsed.stream:
                return await _collect(job, first, parsed)
            streaming = True   # from here the stream owns the job (the response listens for the disconnect)
            return StreamingResponse(_sse(job, first, parsed), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        finally:
            watcher.cancel()
            if not streaming:
                job.cancel.set()   # a no-op once finished; stops the worker if this handler was cancelled

    async def list_models(request: Request) -> Response:
        authorize(request)
        return JSONResponse({"object": "list", "data": [_model(m) for m in models]})

    async def get_model(request: Request) -> Response:
        authorize(request)
        name = request.path_params["name"]
        if name not in models:
            raise ApiError(404, f"the model '{name}' does not exist here", code="model_not_found")
        return JSONResponse(_model(name))

    def _model(name: str) -> dict:
        return {"id": name, "object": "model", "created": created, "owned_by": "phi4edge"}

    async def health(request: Request) -> Response:
        waiting = scheduler.waiting if scheduler else 0
        return JSONResponse({"status": "ok", "model": model_id, "waiting": waiting,
                             "running": bool(scheduler and scheduler.running), "max_queue": settings.max_queue})

    async def api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return JSONResponse(exc.body, status_code=exc.status, headers=exc.headers)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return _error(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}",
                      code="not_found" if exc.status_code == 404 else None)

    async def internal_error(request: Request, exc: Exception) -> Response:
        return _error(500, f"internal error ({type(exc).__name__})", "server_error")

    routes = [Route("/v1/chat/completions", chat_completions, methods=["POST"]),
              Route("/v1/models", list_models, methods=["GET"]),
              Route("/v1/models/{name:path}", get_model, methods=["GET"]),
              Route("/health", health, methods=["GET"])]
    return Starlette(routes=routes, lifespan=lifespan,
                     exception_handlers={ApiError: api_error, HTTPException: http_error, Exception: internal_error})


async def _watch_disconnect(request: Request, job: Job) -> None:
    """Wait for the client to go away (the body has been read): cancel its job and wake its handler."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
    job.cancel.set()
    job.events.put_nowait(Failed(499, "the client disconnected"))


async def _collect(job: Job, first: object, parsed: ChatRequest) -> Response:
    cid, event = completion_id(), first
    text: list[str] = []
    while True:
        if isinstance(event, Failed):
            return _error(event.status, event.message, event.kind, event.code)
        if isinstance(event, Finished):
            return JSONResponse(completion(cid, parsed.model, "".join(text), event))
        assert isinstance(event, Delta)
        text.append(event.text)
        event = await job.events.get()


async def _sse(job: Job, first: object, parsed: ChatRequest) -> AsyncIterator[str]:
    """Server-sent events as the OpenAI client reads them: a role chunk, content chunks, a chunk
    with the finish reason, optionally a usage chunk, then [DONE]. The client leaving closes this
    generator (Starlette cancels it), which cancels the job."""
    cid, event = completion_id(), first

    def data(obj: dict) -> str:
        return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"

    try:
        yield data(chunk(cid, parsed.model, {"role": "assistant", "content": ""}))
        while True:
            if isinstance(event, Failed):
                yield data(error_body(event.message, event.kind, event.code))
                return
            if isinstance(event, Finished):
                yield data(chunk(cid, parsed.model, {}, event.finish_reason))
                if parsed.include_usage:
                    yield data({**chunk(cid, parsed.model, {}), "choices": [], "usage": usage(event)})
                yield "data: [DONE]\n\n"
                return
            assert isinstance(event, Delta)
            yield data(chunk(cid, parsed.model, {"content": event.text}))
            event = await job.events.get()
    finally:
        job.cancel.set()


def serve(engine: Engine, settings: ServerSettings, model_id: str | None = None) -> None:
    """Run the server until interrupted."""
    import uvicorn
    uvicorn.run(create_app(engine, settings, model_id), host=settings.host, port=settings.port,
                limit_concurrency=settings.max_connections, timeout_keep_alive=5, log_level="info")
