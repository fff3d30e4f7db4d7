"""Runner `serve`, routes: OpenAI's /v1 API (also under /openai/v1) and /v1/feedback.

kserve 0.21 registers OpenAI routes only through vllm, which cannot be installed next to
this project's torch, so these are added to kserve's FastAPI app directly, ahead of its own
routes (kserve's V1 protocol also claims GET /v1/models).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from openai.types import Model
from openai.types.chat import chat_completion_chunk as chunk_types
from pydantic import BaseModel, ValidationError
from starlette.requests import ClientDisconnect

from runners.errors import InvalidInput
from runners.serve import embeddings, structured
from runners.serve.admission import Engine, Job, timeout_error
from runners.serve.collect import Collector
from runners.serve.config import Adapter, ServeConfig
from runners.serve.errors import APIError, error_body, from_validation
from runners.serve.generation import Generation, GenerationCancelled, GenerationTimeout, Sampling
from runners.serve.logprobs import Streamed, check_prompt_ids
from runners.serve.metrics import MODEL_READY, REJECTED
from runners.serve.middleware import json_error
from runners.serve.model import ServeModel
from runners.serve.protocol import (
    ChatRequest,
    CompletionRequest,
    FeedbackRequest,
    chat_chunk,
    chat_completion,
    dump,
    model_card,
    new_id,
    now,
    text_completion,
)
from runners.serve.throttle import ClientBuckets, retry_after

VERSION_HEADER = "X-LLMOps-Model-Version"
# For a backend that does not say how many characters its longest token spells: generous,
# so a real prompt is never refused by the character pre-check, only a flood.
FALLBACK_CHARS_PER_TOKEN = 128
Req = TypeVar("Req", bound=BaseModel)


def parse(model: type[Req], data: dict[str, Any]) -> Req:
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise from_validation(err) from None


async def read_json(request: Request) -> dict[str, Any]:
    body = await request.body()
    try:
        data = json.loads(body)
    except json.JSONDecodeError as err:
        raise APIError(
            400,
            f"request body is not valid JSON: {err.msg} at line {err.lineno} column {err.colno}",
            code="invalid_json",
        ) from None
    except UnicodeDecodeError:
        raise APIError(400, "request body is not UTF-8 JSON", code="invalid_json") from None
    if not isinstance(data, dict):
        raise APIError(400, "request body must be a JSON object", code="invalid_json")
    return data


async def client_gone(request: Request) -> None:
    """Returns when the client disconnects. Called once the body has been read, when the
    server's receive() has nothing more to give until the connection closes."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def sse(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


class Service:
    """What the routes share: the config, the kserve model, the engine and the collector."""

    def __init__(self, config: ServeConfig, model: ServeModel, collector: Collector | None) -> None:
        self.config = config
        self.model = model
        self.collector = collector
        self.engine: Engine | None = None
        self.headers = {VERSION_HEADER: config.model_version}
        # Adapters answering now, name -> version (config.adapters once loaded, then the
        # /v2/adapters routes); the base answers under config.name.
        self.adapters: dict[str, str] = {}
        limits = config.limits
        self.feedback_buckets = ClientBuckets(limits.feedback_per_s, limits.feedback_burst)

    def start_engine(self) -> None:
        assert self.model.backend is not None
        limits = self.config.limits
        self.engine = Engine(
            self.model.backend,
            limits.max_concurrency,
            limits.max_queue,
            limits.timeout_s,
            self.config.name,
        )
        self.adapters = {a.name: a.version for a in self.config.adapters}
        for name in [self.config.name, *self.adapters]:
            MODEL_READY.labels(name).set(1)

    def ready_engine(self) -> Engine:
        # Loaded and smoke-checked (the backend is set only then). A stopping server keeps
        # answering: readiness already says 503, so callers move away, but a request the
        # kernel handed to this process's shared port before its listener closed is served
        # rather than refused in the middle of a rollout.
        if self.model.backend is None or self.engine is None:
            raise APIError(
                503,
                "the model is not ready (still loading); retry when /v2/health/ready answers 200",
                type="server_error",
                code="model_not_ready",
                headers={"Retry-After": "5"},
            )
        return self.engine

    def check_model(self, name: str) -> None:
        if name != self.config.name and name not in self.adapters:
            served = ", ".join(f"'{n}'" for n in [self.config.name, *sorted(self.adapters)])
            raise APIError(
                404,
                f"The model '{name}' does not exist; this deployment serves {served} "
                "(GET /v1/models lists them)",
                param="model",
                code="model_not_found",
            )

    def version_of(self, name: str) -> str:
        """The version a served model name answers with (the fingerprint of its answers)."""
        return self.adapters.get(name, self.config.model_version)

    def cards(self) -> list[Model]:
        created = self.model.created
        cards = [model_card(self.config.name, self.config.model_version, created)]
        return cards + [model_card(n, v, created) for n, v in sorted(self.adapters.items())]

    def sampling(self, req: ChatRequest | CompletionRequest, prompt_tokens: int) -> Sampling:
        limit = self.config.limits.max_tokens
        asked = req.requested_tokens()
        param = "max_completion_tokens" if getattr(req, "max_completion_tokens", None) else None
        param = param or "max_tokens"
        if asked is not None and asked > limit:
            raise APIError(
                400,
                f"{param} {asked} is above this deployment's limit of {limit}; "
                f"ask for at most {limit}",
                param=param,
                code="max_tokens_above_limit",
            )
        max_tokens = limit if asked is None else asked  # 0: echo scoring only
        context = self.model.backend.context_length if self.model.backend else None
        if context is not None and prompt_tokens + max_tokens > context:
            room = context - prompt_tokens
            if asked is not None or room < 1:
                raise APIError(
                    400,
                    f"this model's context is {context} tokens; the prompt takes "
                    f"{prompt_tokens} and {param} asks for {max_tokens}: shorten the prompt "
                    f"or ask for at most {max(room, 0)} tokens",
                    param="messages" if room < 1 else param,
                    code="context_length_exceeded",
                )
            max_tokens = room
        return Sampling(
            max_tokens=max_tokens,
            temperature=1.0 if req.temperature is None else req.temperature,
            top_p=1.0 if req.top_p is None else req.top_p,
            stop=req.stops(),
            seed=req.seed,
            min_tokens=min(req.min_tokens, max_tokens),
            logprobs=req.logprob_request()[0],
            echo=req.logprob_request()[1],
            adapter=None if req.model == self.config.name else req.model,
        )

    def check_length(self, characters: int) -> None:
        """400 for a prompt whose characters alone cannot fit the context, before anything
        tokenises it: no token spells more characters than the vocabulary's longest, so
        `characters / longest` tokens is the least the prompt can take."""
        backend = self.model.backend
        context = backend.context_length if backend is not None else None
        if context is None:
            return
        longest = getattr(backend, "max_token_chars", None) or FALLBACK_CHARS_PER_TOKEN
        if characters > context * longest:
            raise APIError(
                400,
                f"this model's context is {context} tokens; the prompt's {characters} "
                f"characters take at least {-(-characters // longest)} of them: shorten it",
                param="messages",
                code="context_length_exceeded",
            )

    def preparer(
        self,
        req: ChatRequest | CompletionRequest,
        prompt: str | list[int] | None,
        plan: structured.Plan | None = None,
    ) -> Callable[[], tuple[str | list[int], bool, Sampling]]:
        """The work of rendering and measuring the prompt and deciding the sampling, to run in
        a generation thread once admitted (Engine.admit); a hopeless length is refused now."""
        backend = self.model.backend
        assert backend is not None
        chat = prompt is None
        if prompt is None:
            assert isinstance(req, ChatRequest)
            self.check_length(sum(len(m.get("content") or "") for m in req.messages))
        elif isinstance(prompt, str):
            self.check_length(len(prompt))

        def prepare() -> tuple[str | list[int], bool, Sampling]:
            if isinstance(prompt, list):  # token ids: counted as they are
                return prompt, chat, self.sampling(req, len(prompt))
            try:
                if prompt is not None:
                    text = prompt
                elif plan is not None:  # tools shown to the model (structured.py)
                    text = structured.render(backend, req.messages, plan)  # type: ignore[union-attr]
                else:
                    text = backend.chat_prompt(req.messages)  # type: ignore[union-attr]
                tokens = backend.count_tokens(text, chat)
            except Exception as err:  # jinja's TemplateError and friends: the messages' fault
                raise APIError(
                    400,
                    f"the model's chat template rejected the messages: {err}",
                    param="messages",
                    code="invalid_messages",
                ) from None
            sampling = self.sampling(req, tokens)
            if plan is not None:  # compiled here, off the event loop; a bad schema is a 400
                sampling.constraint = structured.compile_plan(backend, plan)
            return text, chat, sampling

        return prepare

    async def result(self, job: Job) -> Generation:
        return await job.result()

    async def answer(self, job: Job, request: Request) -> Generation:
        """A non-streamed request's result, or ClientDisconnect once its client has left.

        Starlette runs a plain handler to its end whatever the client does, so without this
        a request whose client hung up would hold its batching slot until max_tokens or
        timeout_s, generating for nobody. A stream stops when its response sees the client
        gone; a plain handler's only sign is the ASGI `http.disconnect` message, so the
        generation races it.
        """
        generation = asyncio.ensure_future(self.result(job))
        gone = asyncio.ensure_future(client_gone(request))
        try:
            await asyncio.wait({generation, gone}, return_when=asyncio.FIRST_COMPLETED)
            if not generation.done() and gone.exception() is not None:
                return await generation  # cannot watch the client: answer as before
        finally:
            gone.cancel()
            if gone.done() and not gone.cancelled():
                gone.exception()  # retrieved, or asyncio logs it with a traceback
            if not generation.done():
                # Stops the generation at its next step (Job.result sets the cancel flag
                # when cancelled); the slot frees when its thread returns.
                job.control.cancelled.set()
                generation.cancel()
        if generation.done():  # also when both finished at once: the answer is ready
            return generation.result()
        raise ClientDisconnect()

    async def record(
        self, id: str, messages: list[dict[str, str]], result: Generation, kind: str
    ) -> None:
        """Collect the interaction; redaction and the file lock run in a thread, off the
        event loop, which keeps answering other requests meanwhile."""
        if self.collector is None:
            return
        usage = {
            "prompt_tokens": result.prompt_tokens,
            "completion_tokens": result.completion_tokens,
            "total_tokens": result.prompt_tokens + result.completion_tokens,
        }
        try:
            await asyncio.to_thread(
                self.collector.interaction, id, messages, result.text, usage, kind
            )
        except OSError as err:  # a full disk must not fail the request the user already got
            print(f"llmops-serve: could not collect {id}: {err}", file=sys.stderr, flush=True)

    async def stream(
        self,
        job: Job,
        chunks: Callable[[str | None, Generation | None], list[dict[str, Any]]],
        on_done: Callable[[Generation], Awaitable[None]],
    ) -> AsyncIterator[str]:
        """SSE: each piece, then the finish (and usage) chunks and [DONE]; errors as an event."""
        try:
            for payload in chunks(None, None):
                yield sse(payload)
            async for piece in job.pieces():
                for payload in chunks(piece, None):
                    yield sse(payload)
            result = await self.result(job)
        except GenerationTimeout:
            yield sse(timeout_error(self.config.limits.timeout_s).body())
            return
        except GenerationCancelled:
            return
        except Exception as err:  # headers are sent: the error travels as an event
            yield sse(error_body(f"generation failed: {err}", "server_error"))
            return
        await on_done(result)
        for payload in chunks(None, result):
            yield sse(payload)
        yield "data: [DONE]\n\n"


def openai_errors(
    handler: Callable[..., Awaitable[Response]],
) -> Callable[..., Awaitable[Response]]:
    """Every failure of a route becomes OpenAI's error shape, with the right status."""

    async def wrapped(*args: Any, **kwargs: Any) -> Response:
        try:
            return await handler(*args, **kwargs)
        except (APIError, ClientDisconnect):
            # ClientDisconnect: the body never fully arrived, or the client left before the
            # answer was ready; server.py answers 499 to nobody.
            raise
        except GenerationTimeout:
            raise timeout_error(args[0].config.limits.timeout_s) from None
        except Exception as err:
            print(f"llmops-serve: request failed: {err!r}", file=sys.stderr, flush=True)
            raise APIError(500, f"generation failed: {err}", type="server_error") from err

    return wrapped


def register_routes(app: FastAPI, service: Service) -> None:
    router = APIRouter()
    headers = service.headers
    config = service.config

    @router.get("/models")
    async def list_models() -> Response:
        cards = [dump(card) for card in service.cards()]
        return JSONResponse({"object": "list", "data": cards}, headers=headers)

    @router.get("/models/{model_id:path}")
    async def get_model(model_id: str) -> Response:
        service.check_model(model_id)
        card = next(card for card in service.cards() if card.id == model_id)
        return JSONResponse(dump(card), headers=headers)

    @router.post("/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await _chat(service, request, time.monotonic())

    @router.post("/completions")
    async def completions(request: Request) -> Response:
        return await _complete(service, request, time.monotonic())

    @router.post("/feedback")
    async def feedback(request: Request) -> Response:
        # Before reading the body: a flood costs a dictionary look-up per call. Only a keyless
        # runtime throttles by address: with a key, the caller is the application the key was
        # given to, which sends its users' feedback from one address (its quotas are per key).
        wait = (
            service.feedback_buckets.take(request.client.host if request.client else None)
            if not config.keyed()
            else 0.0
        )
        if wait:
            REJECTED.labels("feedback_rate").inc()
            raise APIError(
                429,
                f"too much feedback from this client: at most {config.limits.feedback_burst} "
                f"at once and {config.limits.feedback_per_s:g} per second; retry later",
                type="rate_limit_error",
                code="rate_limit_exceeded",
                headers={"Retry-After": retry_after(wait)},
            )
        req = parse(FeedbackRequest, await read_json(request))
        recorded = service.collector is not None
        if service.collector is not None:
            await asyncio.to_thread(
                service.collector.feedback, req.id, req.verdict(), req.correction, req.comment
            )
        message = (
            "feedback recorded"
            if recorded
            else "feedback accepted; this deployment does not collect data, so it is not stored"
        )
        body = {"id": req.id, "object": "feedback", "rating": req.verdict(), "recorded": recorded}
        return JSONResponse({**body, "message": message}, headers=headers)

    @router.post("/embeddings")
    async def create_embeddings(request: Request) -> Response:
        embeddings.check_enabled(config)  # 404 before the body is read
        data = await read_json(request)
        body = await embeddings.answer(service.model.embedder, config, data)
        return JSONResponse(body, headers=headers)

    app.include_router(router, prefix="/v1")
    app.include_router(router, prefix="/openai/v1")

    async def api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, APIError)
        response = json_error(exc)
        response.headers.update(headers)
        return response

    app.add_exception_handler(APIError, api_error)
    register_adapter_routes(app, service)


def _adapter_listing(service: Service) -> dict[str, Any]:
    """The served base and its adapters with their versions, as /v2/adapters answers."""
    config = service.config
    return {
        "base": {"name": config.name, "version": config.model_version},
        "adapters": [{"name": n, "version": v} for n, v in sorted(service.adapters.items())],
    }


def _transformers_backend(service: Service) -> Any:
    """The ready engine's transformers backend; another backend serves no adapters (400)."""
    from runners.serve.backend_transformers import TransformersBackend

    service.ready_engine()
    backend = service.model.backend
    if not isinstance(backend, TransformersBackend):
        raise APIError(400, "only backend 'transformers' serves adapters", code="no_adapters")
    return backend


async def _adapter_body(name: str, request: Request) -> Adapter:
    """The request's adapter (its folder and version) named `name`; a bad body is a 400."""
    data = await read_json(request)
    try:
        return Adapter.model_validate({**data, "name": name})
    except ValidationError as err:
        first = err.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "(body)"
        raise APIError(400, f"{field}: {first['msg']}", code="invalid_adapter") from None


async def _load_adapter(service: Service, name: str, request: Request) -> Response:
    """Load a new adapter under `name`; the base's name or a served adapter's is a 409."""
    from runners.serve.backend_transformers import AdapterError

    config = service.config
    backend = _transformers_backend(service)
    adapter = await _adapter_body(name, request)
    if name == config.name:
        raise APIError(409, f"'{name}' is the base's name", code="name_taken")
    if name in service.adapters:
        raise APIError(
            409, f"the adapter '{name}' is served already; unload it first", code="name_taken"
        )
    try:
        await asyncio.to_thread(backend.add_adapter, name, adapter.dir)
    except (AdapterError, InvalidInput) as err:
        raise APIError(400, str(err), code="invalid_adapter") from None
    service.adapters[name] = adapter.version
    MODEL_READY.labels(name).set(1)
    return JSONResponse(_adapter_listing(service))


async def _replace_adapter(service: Service, name: str, request: Request) -> Response:
    """Swap a served adapter for the request's version, loading it beside the old one."""
    from runners.serve.backend_transformers import AdapterError

    if name not in service.adapters:
        return await _load_adapter(service, name, request)
    backend = _transformers_backend(service)
    adapter = await _adapter_body(name, request)

    def switched() -> None:
        service.adapters[name] = adapter.version

    try:
        await asyncio.to_thread(
            backend.replace_adapter, name, adapter.dir, service.config.limits.timeout_s, switched
        )
    except (AdapterError, InvalidInput) as err:
        raise APIError(400, str(err), code="invalid_adapter") from None
    except KeyError:  # unloaded meanwhile
        raise APIError(404, f"no adapter '{name}' is served", code="model_not_found") from None
    return JSONResponse(_adapter_listing(service))


async def _unload_adapter(service: Service, name: str) -> Response:
    """Stop serving an adapter: new requests for it get 404, running ones finish first."""
    backend = _transformers_backend(service)
    if name not in service.adapters:
        raise APIError(404, f"no adapter '{name}' is served", code="model_not_found")
    del service.adapters[name]  # new requests for it: 404 from here on
    MODEL_READY.labels(name).set(0)
    await asyncio.to_thread(backend.remove_adapter, name, service.config.limits.timeout_s)
    return JSONResponse(_adapter_listing(service))


def register_adapter_routes(app: FastAPI, service: Service) -> None:
    """/v2/adapters: list, load and unload LoRA adapters on the served base while the
    process serves the others (the local deploy target calls them on apply)."""

    @app.get("/v2/adapters")
    async def list_adapters() -> Response:
        return JSONResponse(_adapter_listing(service))

    @app.get("/v2/adapters/{name}/ready")
    async def adapter_ready(name: str) -> Response:
        if name not in service.adapters:
            raise APIError(404, f"no adapter '{name}' is served", code="model_not_found")
        return JSONResponse({"name": name, "version": service.adapters[name], "ready": True})

    @app.post("/v2/adapters/{name}")
    async def load_adapter(name: str, request: Request) -> Response:
        return await _load_adapter(service, name, request)

    @app.put("/v2/adapters/{name}")
    async def replace_adapter(name: str, request: Request) -> Response:
        """Serve this version of the adapter: a new one loads as POST does; a served one is
        replaced with no moment in which its name answers 404 (the new version loads beside
        the old, new requests switch to it, running ones finish on the old)."""
        return await _replace_adapter(service, name, request)

    @app.delete("/v2/adapters/{name}")
    async def unload_adapter(name: str) -> Response:
        return await _unload_adapter(service, name)


@openai_errors
async def _chat(service: Service, request: Request, started: float) -> Response:
    engine = service.ready_engine()
    req = parse(ChatRequest, await read_json(request))
    service.check_model(req.model)
    req.check_supported()
    plan = structured.plan(req)
    job = await engine.admit(service.preparer(req, None, plan), started)
    id, created = new_id("chatcmpl"), now()
    tool_stream = structured.ToolStream(plan) if plan.calls_tools else None
    name, fingerprint = req.model, service.version_of(req.model)

    async def record(result: Generation) -> None:
        await service.record(id, req.messages, result, "chat")

    logprobs = Streamed(req.logprob_request()[0])
    if req.stream:

        def chunks(piece: str | None, result: Generation | None) -> list[dict[str, Any]]:
            if piece is None and result is None:
                delta = chunk_types.ChoiceDelta(role="assistant", content="")
                return [dump(chat_chunk(id, name, fingerprint, created, delta))]
            if result is None and tool_stream is not None:  # text or tool-call deltas
                deltas = tool_stream.piece(str(piece))
                return [dump(chat_chunk(id, name, fingerprint, created, d)) for d in deltas]
            if result is None:
                assert piece is not None
                delta = chunk_types.ChoiceDelta(content=piece)
                scores = logprobs.chat(logprobs.piece(piece))
                return [dump(chat_chunk(id, name, fingerprint, created, delta, logprobs=scores))]
            scores = logprobs.chat(logprobs.rest(result.logprobs))
            finish = result.finish_reason
            out = []
            if tool_stream is not None:
                deltas = tool_stream.finish()
                out = [dump(chat_chunk(id, name, fingerprint, created, d)) for d in deltas]
                finish = "tool_calls" if tool_stream.calls else finish
            last = chat_chunk(id, name, fingerprint, created, finish=finish, logprobs=scores)
            out.append(dump(last))
            if req.include_usage():
                out.append(dump(chat_chunk(id, name, fingerprint, created, result=result)))
            return out

        return streaming(service.stream(job, chunks, record), service.headers)
    result = await service.answer(job, request)
    await record(result)
    scores = logprobs.chat(logprobs.rest(result.logprobs))
    body = dump(chat_completion(id, name, fingerprint, created, result, scores))
    calls = structured.parse_calls(result.text, plan.names) if plan.calls_tools else None
    if calls:
        body = structured.with_calls(body, calls)
    return JSONResponse(body, headers=service.headers)


@openai_errors
async def _complete(service: Service, request: Request, started: float) -> Response:
    engine = service.ready_engine()
    req = parse(CompletionRequest, await read_json(request))
    service.check_model(req.model)
    req.check_supported()
    prompt = req.text()
    text = prompt
    if isinstance(prompt, list):  # token ids: the text they spell is echoed and collected
        backend = service.model.backend
        assert backend is not None
        check_prompt_ids(prompt, backend.vocab_size)
        text = backend.decode(prompt)
    assert isinstance(text, str)
    job = await engine.admit(service.preparer(req, prompt), started)
    id, created = new_id("cmpl"), now()
    name, fingerprint = req.model, service.version_of(req.model)
    top, _ = req.logprob_request()
    logprobs = Streamed(top, 0 if req.echo else len(text))

    async def record(result: Generation) -> None:
        await service.record(id, [{"role": "user", "content": text}], result, "completion")

    if req.stream:

        def chunks(piece: str | None, result: Generation | None) -> list[dict[str, Any]]:
            if piece is None and result is None:
                return []
            if result is None:
                assert piece is not None
                scores = logprobs.completion(logprobs.piece(piece))
                chunk = text_completion(id, name, fingerprint, created, piece, None, None, scores)
                return [dump(chunk)]
            scores = logprobs.completion(logprobs.rest(result.logprobs))
            final = text_completion(
                id, name, fingerprint, created, "", result.finish_reason, None, scores
            )
            out = [dump(final)]
            if req.include_usage():
                usage = text_completion(id, name, fingerprint, created, None, None, result)
                out.append(dump(usage))
            return out

        return streaming(service.stream(job, chunks, record), service.headers)
    result = await service.answer(job, request)
    await record(result)
    # echo: the prompt and its tokens' logprobs before the answer's (the first one null)
    scores = logprobs.completion(
        logprobs.rest([*(result.prompt_logprobs or []), *(result.logprobs or [])])
    )
    shown = text + result.text if req.echo else result.text
    completion = text_completion(
        id, name, fingerprint, created, shown, result.finish_reason, result, scores
    )
    return JSONResponse(dump(completion), headers=service.headers)


def streaming(events: AsyncIterator[str], headers: dict[str, str]) -> StreamingResponse:
    return StreamingResponse(
        events,
        media_type="text/event-stream",
        headers={**headers, "Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
