"""An OpenAI-compatible chat-completions server for a local model (FastAPI app factory).

``GET /v1/models`` and ``POST /v1/chat/completions`` with text and image content parts (images
as base64 ``data:image/...;base64,`` URLs, at most :data:`MAX_REQUEST_PIXELS` pixels per request;
remote URLs are refused since the server fetches nothing), ``logprobs`` / ``top_logprobs``
(0..20), ``max_tokens`` / ``max_completion_tokens``, ``temperature`` (0 = greedy), ``top_p``,
``seed``, ``stop``, ``n`` = 1 and ``logit_bias`` (added to the logits before sampling and before the
returned log-probabilities). Any other field is refused by name unless it is at its neutral
value (:func:`~logitleak.serve.schemas.refusal`). Generation runs in one
worker thread (:class:`~logitleak.serve.engine.Engine`) that micro-batches concurrent
requests. Every refusal is a 4xx with ``{"error": {"message", "type", "param", "code"}}``.

An optional API key (Bearer) guards every route; the key is compared in constant time and is
never logged or echoed.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import io
import logging
import socket
import threading
import time
import uuid
import warnings
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from logitleak.serve.engine import MAX_IMAGES, MAX_NEW_TOKENS, Engine
from logitleak.serve.requests import DEFAULT_MAX_TOKENS, GenRequest, GenResult
from logitleak.serve.schemas import (
    ChatCompletion,
    ChatCompletionRequest,
    ChatMessage,
    Choice,
    ChoiceLogprobs,
    ImagePart,
    ModelCard,
    ModelList,
    ResponseMessage,
    TokenLogprob,
    TopLogprob,
    Usage,
    refusal,
)
from logitleak.wire.bodies import TOO_DEEP, RequestError, error_response, parse_json, read_body, validation_message

MAX_BODY_BYTES = 20 * 1024 * 1024
MAX_IMAGE_PIXELS = 4096 * 4096
MAX_REQUEST_PIXELS = 4096 * 4096  # all of one request's images together (eight 4096² images took 22 s and 1.6 GB)
log = logging.getLogger("logitleak.server")


def decode_image_url(url: str, pixels_left: int = MAX_REQUEST_PIXELS, number: int = 1):
    """A ``data:image/...;base64,...`` URL -> an RGB PIL image, or a :class:`RequestError`
    (also when its header declares more than ``pixels_left``, the request's remaining budget:
    refused before a pixel is decoded)."""
    from PIL import Image

    if url.startswith(("http://", "https://")):
        raise RequestError("Remote image URLs cannot be fetched by this server; send the image inline as a "
                           "base64 data URL (data:image/png;base64,...).", param="messages", code="invalid_image_url")
    if not url.startswith("data:"):
        raise RequestError("An image_url must be a base64 data URL such as data:image/png;base64,....",
                           param="messages", code="invalid_image_url")
    header, sep, payload = url.partition(",")
    if not sep or ";base64" not in header or not header[5:].startswith("image/"):
        raise RequestError("The image data URL is malformed; use data:image/png;base64,<base64 bytes>.",
                           param="messages", code="invalid_image_url")
    try:
        raw = base64.b64decode(payload.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise RequestError("The image data URL does not hold valid base64.", param="messages",
                           code="invalid_image_url") from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(raw))
            if img.width * img.height > MAX_IMAGE_PIXELS:
                raise RequestError(f"The image is {img.width}x{img.height} pixels; send at most {MAX_IMAGE_PIXELS} pixels.",
                                   param="messages", code="image_too_large")
            if img.width * img.height > pixels_left:
                raise RequestError(f"The request's images hold more than {MAX_REQUEST_PIXELS} pixels in all (image "
                                   f"{number}, {img.width}x{img.height}, goes over this server's limit per request); "
                                   "send fewer or smaller images.", param="messages", code="image_too_large")
            img.load()
            return img.convert("RGB")
    except RequestError:
        raise
    except Exception:  # noqa: BLE001 - any decoder failure is a bad image
        raise RequestError("The image data URL does not decode to an image (PNG, JPEG, ...).", param="messages",
                           code="invalid_image") from None


def to_gen_request(req: ChatCompletionRequest) -> GenRequest:
    """OpenAI request -> engine request (HF-format messages, decoded images, settings)."""
    messages, images = [], []
    for m in req.messages:
        role = "system" if m.role == "developer" else m.role
        messages.append({"role": role, "content": _parts(m, images)})
    if len(images) > MAX_IMAGES:
        raise RequestError(f"Too many images in one request ({len(images)}); send at most {MAX_IMAGES}.", param="messages")
    limit = req.token_limit if req.token_limit is not None else DEFAULT_MAX_TOKENS
    if limit > MAX_NEW_TOKENS:
        raise RequestError(f"max_tokens={limit} is above this server's limit of {MAX_NEW_TOKENS}.", param="max_tokens")
    return GenRequest(
        messages=messages, images=images, max_tokens=limit,
        temperature=0.0 if req.temperature is None else float(req.temperature),
        top_p=1.0 if req.top_p is None else float(req.top_p), seed=req.seed,
        top_logprobs=(req.top_logprobs or 0) if req.logprobs else None, stop=req.stop_list,
        logit_bias=req.bias_by_id,
    )


def _parts(m: ChatMessage, images: list) -> list[dict]:
    if m.content is None:
        return [{"type": "text", "text": ""}]
    if isinstance(m.content, str):
        return [{"type": "text", "text": m.content}]
    parts = []
    for p in m.content:
        if isinstance(p, ImagePart):
            if len(images) >= MAX_IMAGES:
                raise RequestError(f"Too many images in one request; send at most {MAX_IMAGES}.", param="messages")
            used = sum(im.width * im.height for im in images)
            images.append(decode_image_url(p.image_url.url, MAX_REQUEST_PIXELS - used, len(images) + 1))
            parts.append({"type": "image"})
        else:
            parts.append({"type": "text", "text": p.text})
    return parts


def to_completion(result: GenResult, model_name: str) -> ChatCompletion:
    logprobs = None
    if result.logprobs:
        logprobs = ChoiceLogprobs(content=[
            TokenLogprob(token=s.token, logprob=s.logprob, bytes=s.bytes,
                         top_logprobs=[TopLogprob(token=a.token, logprob=a.logprob, bytes=a.bytes) for a in s.top])
            for s in result.steps])
    return ChatCompletion(
        id=f"chatcmpl-{uuid.uuid4().hex}", created=int(time.time()), model=model_name,
        choices=[Choice(index=0, message=ResponseMessage(content=result.text), finish_reason=result.finish_reason,
                        logprobs=logprobs)],
        usage=Usage(prompt_tokens=result.prompt_tokens, completion_tokens=result.completion_tokens,
                    total_tokens=result.prompt_tokens + result.completion_tokens),
    )


def create_app(engine: Engine, *, served_model_name: str, api_key: str | None = None,
               max_body_bytes: int = MAX_BODY_BYTES, request_timeout_s: float = 600.0,
               manage_engine: bool = True) -> FastAPI:
    """The FastAPI app serving ``engine`` as ``served_model_name``.

    ``api_key``: when set, every route needs ``Authorization: Bearer <api_key>`` (401 otherwise).
    ``manage_engine``: start the engine's worker with the app and stop it at shutdown.
    """
    created = int(time.time())

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        if manage_engine:
            engine.start()
        yield
        if manage_engine:
            engine.stop()

    app = FastAPI(title="logitleak OpenAI-compatible server", lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None)
    app.state.engine = engine
    app.state.served_model_name = served_model_name

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, exc: StarletteHTTPException):
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return error_response(exc.status_code, str(exc.detail), type=kind)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, exc: RequestValidationError):
        return error_response(400, f"Invalid request: {exc.errors()[0].get('msg', 'invalid value')}.")

    @app.exception_handler(Exception)
    async def _internal_error(_request: Request, exc: Exception):
        log.exception("unhandled server error")
        return error_response(500, "Internal server error (see the server log).", type="server_error")

    @app.middleware("http")
    async def _auth(request: Request, call_next):
        if api_key:
            header = request.headers.get("authorization", "")
            scheme, _, token = header.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), api_key.encode()):
                return error_response(401, "Missing or invalid API key; send it as 'Authorization: Bearer <key>'.",
                                      code="invalid_api_key")
        return await call_next(request)

    @app.get("/v1/models")
    async def list_models():
        return ModelList(data=[ModelCard(id=served_model_name, created=created)]).model_dump()

    @app.get("/v1/models/{model_id}")
    async def get_model(model_id: str):
        if model_id != served_model_name:
            return error_response(404, f"The model {model_id!r} does not exist; this server serves {served_model_name!r}.",
                                  code="model_not_found")
        return ModelCard(id=served_model_name, created=created).model_dump()

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        body = await read_body(request, max_body_bytes)
        if isinstance(body, JSONResponse):
            return body
        try:
            data = parse_json(body)
        except RequestError as err:
            return error_response(err.status, err.message, code=err.code)
        if not isinstance(data, dict):
            return error_response(400, "The request body must be a JSON object.")
        refused = refusal(data)
        if refused is not None:
            return error_response(400, refused[0], param=refused[1], code=refused[2])
        try:
            req = ChatCompletionRequest.model_validate(data)
        except ValidationError as err:
            message, param = validation_message(err)
            return error_response(400, message, param=param)
        except RecursionError:
            return error_response(400, TOO_DEEP, code="nesting_too_deep")
        if req.model != served_model_name:
            return error_response(404, f"The model {req.model!r} does not exist; this server serves {served_model_name!r}.",
                                  param="model", code="model_not_found")
        try:
            gen = await asyncio.to_thread(to_gen_request, req)
            future = engine.submit(gen)
            result = await asyncio.wait_for(asyncio.wrap_future(future), timeout=request_timeout_s)
        except RequestError as err:
            return error_response(err.status, err.message, type=err.type, param=err.param, code=err.code)
        except TimeoutError:
            return error_response(504, f"Generation took longer than {request_timeout_s:g} s.", type="timeout_error")
        return to_completion(result, served_model_name).model_dump()

    return app


def build_engine(model: str, *, defense: str | None = None, max_batch: int = 16, device: str | None = None,
                 dtype: str | None = None, threads: int | None = None, progress: bool = True,
                 allow_pickle: bool = False) -> tuple[Engine, str]:
    """Load ``model`` (a local directory, a GGUF file, ``organism`` or ``smollm2``) into an
    :class:`Engine`; returns it and the name it is served under (the built-in name, the
    directory's name or the GGUF file's stem)."""
    from pathlib import Path

    from logitleak.defenses.spec import parse_single_defense
    from logitleak.models.loading import load_model

    parsed = parse_single_defense(defense)  # fail on a bad spec before loading anything
    from logitleak.models.resolve import BUILT_IN, resolve_model

    path = resolve_model(model, progress=progress)  # organism, smollm2, a GGUF file or a directory
    if model in BUILT_IN:
        name = model
    else:
        given = Path(model).expanduser()
        name = (given.stem if given.suffix.lower() == ".gguf" else given.name) or str(given)
    adapter = load_model(path, device=device, dtype=dtype, allow_pickle=allow_pickle)
    return Engine(adapter, defense=parsed, max_batch=max_batch, threads=threads), name


# ----------------------------------------------------------------------------- in-process server

class RunningServer:
    """A uvicorn server in a background thread on a loopback port (tests, benchmarks).

    ``with RunningServer(app) as srv: OpenAI(base_url=srv.url, ...)``. ``port=0`` picks a free one.
    """

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning",
                 access_log: bool = False, log_secrets: tuple[str, ...] = ()):
        self.app, self.host, self.port, self.log_level, self.access_log = app, host, port, log_level, access_log
        self.log_secrets = tuple(log_secrets)
        self._server = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def start(self, timeout: float = 60.0) -> RunningServer:
        import uvicorn

        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        self.port = sock.getsockname()[1]
        from logitleak.wire.accesslog import uvicorn_log_config

        config = uvicorn.Config(self.app, log_level=self.log_level, lifespan="on", access_log=self.access_log,
                                log_config=uvicorn_log_config(self.log_secrets))
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]}, daemon=True,
                                        name=f"uvicorn-{self.port}")
        self._thread.start()
        t0 = time.monotonic()
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() - t0 > timeout:
                raise RuntimeError(f"the server on {self.host}:{self.port} did not start")
            time.sleep(0.01)
        return self

    def stop(self, timeout: float = 30.0) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
        self._server = self._thread = None

    def __enter__(self) -> RunningServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def free_port(host: str = "127.0.0.1") -> int:
    """A currently free TCP port on ``host``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]
