"""Runner `serve`, server: kserve's ModelServer app on our sockets, loading, readiness, shutdown.

The primary port is bound before the model loads, so liveness answers and readiness says
503 while it loads. `public_port` is bound with SO_REUSEPORT only once the smoke check
passed, and readiness turns 200 only after that: during a local rollout the old and new
process share it, and the old one leaves after its in-flight requests finished. It is
shared only with versions of the same deployment (ports.py): anything else listening there
is an error (exit 4) naming what holds the port.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import signal
import socket
import sys
import threading
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import uvicorn
from fastapi import FastAPI
from fastapi.exceptions import FastAPIDeprecationWarning
from fastapi.responses import JSONResponse, Response
from kserve import ModelServer
from kserve.constants.constants import FASTAPI_APP_IMPORT_STRING
from kserve.errors import ModelNotReady, ServerNotReady
from kserve.model_server import app
from kserve.protocol.dataplane import DataPlane
from kserve.protocol.rest.server import RESTServer
from starlette.requests import ClientDisconnect
from uvicorn.protocols.http.auto import AutoHTTPProtocol

from runners.serve import ports
from runners.serve.accounting import UsageMiddleware
from runners.serve.collect import Collector
from runners.serve.config import ConfigError, Limits, ServeConfig
from runners.serve.connections import guarded_protocol
from runners.serve.metrics import REJECTED, MetricsMiddleware
from runners.serve.middleware import ApiKeyMiddleware, BodyLimitMiddleware
from runners.serve.model import ModelFailed, ServeModel
from runners.serve.ports import EXIT_MODEL, EXIT_OK, EXIT_PORT
from runners.serve.quotas import QuotaBook
from runners.serve.request_origin import RequestOriginMiddleware
from runners.serve.routes import Service, register_routes
from runners.serve.usage import UsageLog, tokens_today, usage_folder


def say(config: ServeConfig, message: str) -> None:
    print(f"llmops-serve {config.name} ({config.model_version}): {message}", file=sys.stderr)
    sys.stderr.flush()


def bind(host: str, port: int, reuse_port: bool, field: str) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        raise ConfigError(f"{field}: cannot listen on {host}:{port}: {err.strerror}") from None
    sock.listen(2048)
    sock.setblocking(False)
    return sock


def _in_thread(fn: Callable[[], Any]) -> asyncio.Future[Any]:
    """Run `fn` in a daemon thread: a SIGTERM during a long load must not wait for it."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[Any] = loop.create_future()

    def settle(value: Any, error: BaseException | None) -> None:
        if not future.done():
            future.set_exception(error) if error else future.set_result(value)

    def target() -> None:
        try:
            value, error = fn(), None
        except BaseException as err:  # handed to the event loop, which decides the exit code
            value, error = None, err
        with contextlib.suppress(RuntimeError):  # the loop is gone: we are exiting anyway
            loop.call_soon_threadsafe(settle, value, error)

    threading.Thread(target=target, name="load-model", daemon=True).start()
    return future


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # The runtime owns SIGTERM/SIGINT: it stops both servers and exits 0, where
        # uvicorn would re-raise the signal after shutting down.
        yield


class _ReadinessDataPlane(DataPlane):
    """kserve's server readiness is always true; here it waits for every model."""

    async def ready(self) -> bool:
        models = list(self.model_registry.get_models().values())
        return bool(models) and all([await m.healthy() for m in models])


def _uvicorn_server(app: Any, grace_s: int, protocol: type[asyncio.Protocol]) -> uvicorn.Server:
    return _Server(
        uvicorn.Config(
            app,
            log_config=None,
            lifespan="off",
            timeout_graceful_shutdown=grace_s,
            timeout_keep_alive=65,
            http=protocol,
            ws="none",  # no route is a websocket: an upgrade is one more path for a slow client
        )
    )


async def _quiet_503(request: Any, exc: Exception) -> Any:
    return JSONResponse({"error": str(exc)}, status_code=503)


async def _client_gone(request: Any, exc: Exception) -> Any:
    # The connection closed before the whole body arrived (the client left, or
    # connections.py cut it for being too slow): nobody reads this answer, but without a
    # handler Starlette logs a traceback for every such request. 499 is nginx's
    # "client closed request", and what the metrics count it as.
    return Response(status_code=499)


def _protocol(limits: Limits) -> type[asyncio.Protocol]:
    return guarded_protocol(AutoHTTPProtocol, limits)


def run(config: ServeConfig) -> int:
    keys = config.client_keys()
    return asyncio.run(_serve(config, keys))


def _collector(config: ServeConfig) -> Collector | None:
    """Where answers are collected for retraining, when the config turns collection on."""
    if not config.collect.enabled:
        return None
    assert config.collect.dir is not None
    return Collector(
        config.collect.dir,
        config.name,
        config.model_version,
        config.collect.sample_rate,
        config.collect.redact_pii,
        config.collect.seed,
    )


def _application(
    config: ServeConfig, keys: dict[str, str], model: ServeModel, grace_s: int
) -> tuple[FastAPI, Service]:
    """kserve's app with the model registered, llmops' routes first, and the middleware:
    body limit, usage and quotas, the key check, the origin check, metrics."""
    kserve_server = ModelServer(
        http_port=config.port, enable_grpc=False, grace_period=grace_s, workers=1
    )
    kserve_server.register_model(model)
    service = Service(config, model, _collector(config))
    register_routes(app, service)  # first, so GET /v1/models is OpenAI's, not kserve's V1
    RESTServer(
        FASTAPI_APP_IMPORT_STRING,
        _ReadinessDataPlane(kserve_server.registered_models),
        kserve_server.model_repository_extension,
        config.port,
        grace_period=grace_s,
    ).create_application()
    # kserve logs a traceback for every 503 while loading; a readiness probe polls that often.
    app.add_exception_handler(ServerNotReady, _quiet_503)
    app.add_exception_handler(ModelNotReady, _quiet_503)
    app.add_exception_handler(ClientDisconnect, _client_gone)
    app.add_middleware(BodyLimitMiddleware, limit=config.limits.max_body_bytes)
    # Usage rows go to the deployment's state folder, where `llmops usage` reads them; the
    # day's tokens so far are read back, so a restart does not reset daily quotas.
    usage_log = UsageLog(usage_folder(config.state_dir)) if config.state_dir else None
    daily = any(client.quotas.tokens_per_day for client in config.clients)
    spent = tokens_today(usage_log.folder) if usage_log and daily else {}
    book = QuotaBook({client.name: client.quotas for client in config.clients}, spent)
    # Inside the key check, which tells it the client.
    app.add_middleware(
        UsageMiddleware, book=book, log=usage_log, model_version=config.model_version
    )
    app.add_middleware(ApiKeyMiddleware, clients=keys)
    # Outside the key check: a browser page on another site is refused before it can learn
    # anything from a 401, and a keyless local server is covered too.
    app.add_middleware(
        RequestOriginMiddleware,
        allowed_hosts=config.allowed_hosts,
        allowed_origins=config.allowed_origins,
        on_refuse=lambda code: REJECTED.labels(code).inc(),
    )
    app.add_middleware(MetricsMiddleware)
    return app, service


def _bind_public(config: ServeConfig, public_port: int) -> socket.socket:
    """The public port, shared by SO_REUSEPORT only with versions of this deployment;
    ports.PortClaimError naming the holder otherwise."""
    owner = ports.Owner(config.name, str(config.state_dir) if config.state_dir else None)
    return ports.bind_shared(
        config.host,
        public_port,
        owner,
        lambda: bind(config.host, public_port, reuse_port=True, field="public_port"),
    )


async def _serve(config: ServeConfig, keys: dict[str, str]) -> int:
    """Serve until stopped; `keys` are the clients' keys by name (empty: keyless)."""
    # kserve's app defaults to ORJSONResponse, which FastAPI now flags on every start.
    warnings.filterwarnings("ignore", category=FastAPIDeprecationWarning)
    limits = config.limits
    grace_s = math.ceil(limits.timeout_s) + 5
    model = ServeModel(config)
    app, service = _application(config, keys, model, grace_s)

    primary = bind(config.host, config.port, reuse_port=False, field="port")
    protocol = _protocol(limits)  # one for both listeners: they share the pending cap
    servers = [_uvicorn_server(app, grace_s, protocol)]
    tasks = [asyncio.create_task(servers[0].serve(sockets=[primary]))]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    claimed = False

    async def shut_down(code: int) -> int:
        model.ready = False  # readiness turns 503 before listeners close
        for server in servers:
            server.should_exit = True
        await asyncio.gather(*tasks, return_exceptions=True)
        if claimed:
            assert config.public_port is not None
            ports.release(config.host, config.public_port)
        if service.engine is not None:
            service.engine.close()
        say(config, f"stopped (exit {code})")
        return code

    what = config.gguf_file() if config.backend == "llama-cpp" else config.model_dir
    say(config, f"loading {what} with {config.backend}")
    # With a public port, readiness waits for its bind: a rollout must not switch to a
    # process that then finds the port taken.
    loading = _in_thread(lambda: model.load(ready=config.public_port is None))
    stopping = asyncio.ensure_future(stop.wait())
    await asyncio.wait({loading, stopping}, return_when=asyncio.FIRST_COMPLETED)
    if stop.is_set():
        say(config, "stop requested while loading")
        return await shut_down(EXIT_OK)
    try:
        loading.result()
    except ModelFailed as err:
        say(config, str(err))
        return await shut_down(EXIT_MODEL)
    say(config, f"smoke check passed ({len(config.smoke.prompts)} prompt(s) answered)")
    service.start_engine()
    where = f"http://{config.host}:{config.port}"
    if config.public_port is not None:
        try:
            public = _bind_public(config, config.public_port)
        except ports.PortClaimError as err:
            say(config, str(err))
            return await shut_down(EXIT_PORT)
        claimed = True
        servers.append(_uvicorn_server(app, grace_s, protocol))
        tasks.append(asyncio.create_task(servers[-1].serve(sockets=[public])))
        model.ready = True
        where += f" and http://{config.host}:{config.public_port} (public, shared)"
    say(config, f"ready: listening on {where}")
    await stopping
    say(config, "stopping: finishing in-flight requests")
    return await shut_down(EXIT_OK)
