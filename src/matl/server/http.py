"""The validator's HTTP transport: a REST API (FastAPI) over :class:`ValidatorService`.

Every route is a thin adapter: it turns the request into ``(op, body, payload)``, runs
:meth:`ValidatorService.handle` in a worker thread (it is synchronous and takes the validator's
lock) and turns the :class:`Reply` back into a response. A :class:`~matl.errors.ServiceError`
becomes ``{"error": {"code": ..., "message": ...}}`` with the error's HTTP status.

Routes (all JSON unless noted):

======  ========================================  ===============
POST    ``/v1/nodes``                             ``register``
POST    ``/v1/rounds/current/submissions``        ``submit`` (raw safetensors body)
GET     ``/v1/rounds/current``                    ``round``
POST    ``/v1/rounds/current/close``              ``close_round``
GET     ``/v1/rounds/{round}/trusted``            ``trusted``
GET     ``/v1/rounds/{round}/receipts/{node_id}`` ``receipt``
GET     ``/v1/model``                             ``model`` (safetensors body)
GET     ``/v1/verdicts/{gradient_hash}``          ``verdict``
GET     ``/v1/nodes/{node_id}/reputation``        ``reputation``
GET     ``/v1/info``                              ``info``
GET     ``/healthz``                              liveness
======  ========================================  ===============

A submission's body is the safetensors payload itself (``application/octet-stream``); its signed
header travels base64url-encoded in ``X-MATL-Header`` and the node's signature (hex) in
``X-MATL-Signature``. The body is read in chunks and refused with 413 as soon as it passes the
validator's ``max_payload_bytes``, before anything is stored.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import threading
from collections.abc import Callable
from typing import Any

import fastapi
import uvicorn
from fastapi import Header, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from matl.crypto import canonical_json
from matl.errors import (
    AuthenticationError,
    MalformedPayloadError,
    PayloadTooLargeError,
    ServiceError,
)
from matl.protocol import NodeReputation, Receipt, RoundInfo, TrustedGradient, Verdict
from matl.server.service import Reply, ValidatorService
from matl.server.threads import ServerThread

__all__ = [
    "BODY_HEADER",
    "HEADER_HEADER",
    "SIGNATURE_HEADER",
    "HTTPServerThread",
    "create_app",
    "decode_header",
    "encode_header",
    "serve_http",
    "start_http_server",
]

HEADER_HEADER = "X-MATL-Header"
"""Request header carrying the submission header: base64url of its canonical JSON."""
SIGNATURE_HEADER = "X-MATL-Signature"
"""Request header carrying the node's Ed25519 signature of the submission header (hex)."""
BODY_HEADER = "X-MATL-Body"
"""Response header of ``GET /v1/model``: base64url of the whole JSON reply body."""
_OCTET = "application/octet-stream"
_MAX_HEADER_BYTES = 64 * 1024
_MAX_JSON_BYTES = 64 * 1024  # JSON request bodies (registration)
_log = logging.getLogger(__name__)


# --- documentation models (OpenAPI only; replies are passed through as the service made them) ---


class ErrorDetail(BaseModel):
    """A refused request: a stable machine ``code`` and a human message."""

    code: str = Field(description="Stable machine code, e.g. `bad_signature`, `replay`.")
    message: str = Field(description="What was wrong, in words.")


class ErrorBody(BaseModel):
    """Body of every non-2xx reply."""

    error: ErrorDetail


class RegisterRequest(BaseModel):
    """A node's registration."""

    public_key: str = Field(description="The node's raw 32-byte Ed25519 public key, hex.")


class RegisterReply(BaseModel):
    """The registered node's id."""

    node_id: str = Field(description="The node's `did:key` id (derived from its public key).")


class TrustedReply(BaseModel):
    """The gradients a closed round accepted, with their scores and aggregation weights."""

    round: int
    gradients: list[TrustedGradient]


class CloseReply(BaseModel):
    """The closed round and the signed verdicts of its submissions."""

    round: int
    verdicts: list[Verdict]


class InfoReply(BaseModel):
    """What the validator is and what it accepts."""

    validator_id: str
    mode: int
    dim: int
    round_size: int
    max_payload_bytes: int
    max_metadata_bytes: int
    registration: str


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {s: {"model": ErrorBody, "description": _STATUS_TEXT[s]} for s in statuses}


_STATUS_TEXT = {
    400: "Malformed request or payload (`malformed_payload`, `bad_request`).",
    401: "Missing or invalid signature (`bad_signature`).",
    403: "Node not registered or not allowed (`unknown_node`).",
    404: "Unknown gradient, round or node (`not_found`).",
    409: "Replayed submission (`replay`) or not the open round (`wrong_round`).",
    413: "Payload or metadata over the validator's limit (`payload_too_large`).",
    422: "Gradient holds NaN/Inf or has the wrong size or dtype (`invalid_update`).",
}


# --- header codec ---


def encode_header(header: dict[str, Any]) -> str:
    """The ``X-MATL-Header`` value of a submission header: unpadded base64url of its JSON."""
    return base64.urlsafe_b64encode(canonical_json(header)).rstrip(b"=").decode("ascii")


def decode_header(value: str) -> dict[str, Any]:
    """Read an ``X-MATL-Header`` value back; :class:`MalformedPayloadError` if it is not one."""
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
        header = json.loads(raw)
    except (binascii.Error, ValueError) as exc:
        raise MalformedPayloadError(
            f"{HEADER_HEADER} is not base64url-encoded JSON: {exc}"
        ) from None
    if not isinstance(header, dict):
        raise MalformedPayloadError(f"{HEADER_HEADER} must encode a JSON object")
    return header


# --- the app ---


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    return f"{'.'.join(str(p) for p in err.get('loc', ())) or 'body'}: {err.get('msg', '')}"


def _error_response(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": {"code": code, "message": message}})


async def _read_limited(request: Request, limit: int) -> bytes:
    """The request body, refused with :class:`PayloadTooLargeError` once it passes ``limit``."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLargeError(f"payload is {declared} bytes; the limit is {limit}")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLargeError(f"payload is over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def create_app(service: ValidatorService) -> fastapi.FastAPI:
    """The REST API of ``service``.

    Parameters
    ----------
    service:
        The transport-independent dispatcher; every route calls ``service.handle``.

    Returns
    -------
    fastapi.FastAPI
        The ASGI app; its OpenAPI schema is served at ``/openapi.json``.
    """
    info = service.handle("info", {}).body
    max_payload = int(info["max_payload_bytes"])

    app = fastapi.FastAPI(
        title="MATL validator",
        version="1",
        description=(
            "Byzantine-robust validation of federated-learning gradients. Nodes register an "
            "Ed25519 key, submit signed safetensors gradients, and read the validator's signed "
            "verdicts, the trusted gradients of a closed round and their reputation."
        ),
    )

    async def call(op: str, body: dict[str, Any], payload: bytes | None = None) -> Reply:
        return await run_in_threadpool(service.handle, op, body, payload)

    async def on_service_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ServiceError)
        return _error_response(exc.status, exc.code, str(exc))

    async def on_validation_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        where = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', '')}"
            for e in exc.errors()
        )
        return _error_response(400, MalformedPayloadError.code, f"invalid request: {where}")

    async def on_http_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        code = "not_found" if exc.status_code == 404 else "bad_request"
        return _error_response(exc.status_code, code, str(exc.detail))

    async def on_internal_error(_: Request, exc: Exception) -> JSONResponse:
        _log.error("request failed", exc_info=exc)
        return _error_response(500, "internal", "internal error")

    app.add_exception_handler(Exception, on_internal_error)
    app.add_exception_handler(ServiceError, on_service_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)

    def json_reply(reply: Reply, status: int = 200) -> JSONResponse:
        return JSONResponse(status_code=status, content=reply.body)

    @app.get("/healthz", tags=["meta"], summary="Liveness probe")
    async def healthz() -> dict[str, str]:
        """Answers ``{"status": "ok"}`` while the server runs."""
        return {"status": "ok"}

    @app.get("/v1/info", tags=["meta"], response_model=InfoReply, summary="Validator info")
    async def get_info() -> JSONResponse:
        """The validator's id, mode, vector length, round size, limits and registration policy."""
        return json_reply(await call("info", {}))

    @app.post(
        "/v1/nodes",
        tags=["nodes"],
        status_code=201,
        response_model=RegisterReply,
        responses=_errors(400, 403, 413),
        summary="Register a node",
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": RegisterRequest.model_json_schema()}},
            }
        },
    )
    async def register(request: Request) -> JSONResponse:
        """Register an Ed25519 public key; answers the node's ``did:key`` id."""
        raw = await _read_limited(request, _MAX_JSON_BYTES)
        try:
            body = RegisterRequest.model_validate_json(raw).model_dump()
        except ValidationError as exc:
            raise MalformedPayloadError(f"invalid registration: {_first_error(exc)}") from None
        return json_reply(await call("register", body), 201)

    @app.post(
        "/v1/rounds/current/submissions",
        tags=["rounds"],
        status_code=201,
        response_model=Receipt,
        responses=_errors(400, 401, 403, 409, 413, 422),
        summary="Submit a gradient",
        openapi_extra={
            "requestBody": {
                "required": True,
                "description": "The gradient: safetensors with one 1-D F32 tensor `gradient`.",
                "content": {_OCTET: {"schema": {"type": "string", "format": "binary"}}},
            }
        },
    )
    async def submit(
        request: Request,
        x_matl_header: str | None = Header(
            None,
            alias=HEADER_HEADER,
            description="Unpadded base64url of the submission header's canonical JSON.",
        ),
        x_matl_signature: str | None = Header(
            None,
            alias=SIGNATURE_HEADER,
            description="The node's Ed25519 signature of the header's signing bytes, hex.",
        ),
    ) -> JSONResponse:
        """Submit a signed gradient to the open round.

        Answers the validator's signed receipt once the submission is durable in its ledger.
        """
        payload = await _read_limited(request, max_payload)
        if x_matl_header is None:
            raise MalformedPayloadError(f"missing {HEADER_HEADER} header")
        header = decode_header(x_matl_header)
        if x_matl_signature is None:
            raise AuthenticationError(f"missing {SIGNATURE_HEADER} header")
        body = {"header": header, "signature": x_matl_signature}
        return json_reply(await call("submit", body, payload), 201)

    @app.get(
        "/v1/rounds/current", tags=["rounds"], response_model=RoundInfo, summary="The open round"
    )
    async def current_round() -> JSONResponse:
        """The open round's number, submission count and expectations."""
        return json_reply(await call("round", {}))

    @app.post(
        "/v1/rounds/current/close",
        tags=["rounds"],
        response_model=CloseReply,
        responses=_errors(400),
        summary="Close the open round (admin)",
    )
    async def close_round() -> JSONResponse:
        """Score the open round's submissions now and answer their signed verdicts."""
        return json_reply(await call("close_round", {}))

    @app.get(
        "/v1/rounds/{round}/trusted",
        tags=["rounds"],
        response_model=TrustedReply,
        responses=_errors(400, 404),
        summary="Trusted gradients of a round",
    )
    async def trusted(
        round: int = Path(ge=0, description="A closed round."),
        min_score: float | None = Query(None, description="Leave out gradients scored lower."),
    ) -> JSONResponse:
        """The gradients the round accepted, with score and aggregation weight."""
        body: dict[str, Any] = {"round": round}
        if min_score is not None:
            body["min_score"] = min_score
        return json_reply(await call("trusted", body))

    @app.get(
        "/v1/rounds/{round}/receipts/{node_id}",
        tags=["rounds"],
        response_model=Receipt,
        responses=_errors(400, 404),
        summary="A submission's receipt",
    )
    async def receipt(
        round: int = Path(ge=0, description="The round the node submitted in."),
        node_id: str = Path(description="The node's `did:key` id."),
    ) -> JSONResponse:
        """The signed receipt of the node's submission in the round (for safe retries)."""
        return json_reply(await call("receipt", {"node_id": node_id, "round": round}))

    @app.get(
        "/v1/model",
        tags=["model"],
        responses={
            200: {
                "description": (
                    "The global parameters as safetensors (tensor `gradient`); the round, "
                    "dimension and hash are in the X-MATL-Round, X-MATL-Dim and "
                    "X-MATL-Gradient-Hash headers."
                ),
                "content": {_OCTET: {"schema": {"type": "string", "format": "binary"}}},
            }
        },
        response_class=Response,
        summary="The global model",
    )
    async def model() -> Response:
        """The current global parameters (safetensors)."""
        reply = await call("model", {})
        body: dict[str, Any] = reply.body
        headers = {
            "X-MATL-Round": str(body.get("round", "")),
            "X-MATL-Dim": str(body.get("dim", "")),
            "X-MATL-Gradient-Hash": str(body.get("gradient_hash", "")),
            BODY_HEADER: encode_header(body),
        }
        return Response(content=reply.payload or b"", media_type=_OCTET, headers=headers)

    @app.get(
        "/v1/verdicts/{gradient_hash}",
        tags=["verdicts"],
        response_model=Verdict,
        responses=_errors(404),
        summary="A gradient's verdict",
    )
    async def verdict(
        gradient_hash: str = Path(description="SHA-256 hex of the gradient's float32 bytes."),
    ) -> JSONResponse:
        """The validator's signed verdict (404 while the gradient's round is still open)."""
        return json_reply(await call("verdict", {"gradient_hash": gradient_hash}))

    @app.get(
        "/v1/nodes/{node_id}/reputation",
        tags=["nodes"],
        response_model=NodeReputation,
        responses=_errors(404),
        summary="A node's reputation",
    )
    async def reputation(
        node_id: str = Path(description="The node's `did:key` id."),
    ) -> JSONResponse:
        """The node's reputation, quarantine state and number of rounds seen."""
        return json_reply(await call("reputation", {"node_id": node_id}))

    return app


# --- running it ---


def _config(service: ValidatorService, host: str, port: int) -> uvicorn.Config:
    info = service.handle("info", {}).body
    header_room = max(_MAX_HEADER_BYTES, 4 * int(info.get("max_metadata_bytes", 0)) + 8192)
    return uvicorn.Config(
        create_app(service),
        host=host,
        port=port,
        log_level="warning",
        lifespan="off",
        ws="none",
        h11_max_incomplete_event_size=header_room,
        timeout_graceful_shutdown=5,
    )


def serve_http(
    service: ValidatorService,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    ready: threading.Event | None = None,
) -> None:
    """Serve the REST API with uvicorn on ``host:port`` until interrupted (blocks).

    ``ready`` is set once the server accepts connections (see :meth:`ServerThread.run`).
    """
    HTTPServerThread(service, host, port).run(ready)


class HTTPServerThread(ServerThread):
    """The REST API served from a background thread (tests, embedding).

    Use :func:`start_http_server` to make one; ``with`` stops it on exit. ``url`` is
    ``http://host:port``; see :class:`~matl.server.threads.ServerThread`.
    """

    scheme = "http"
    protocol = "HTTP"

    def __init__(self, service: ValidatorService, host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__(host, port)
        self._server = uvicorn.Server(_config(service, host, self.port))

    async def _serve(self, ready: Callable[[], None]) -> None:
        serving = asyncio.ensure_future(self._server.serve(sockets=[self._sock]))
        while not self._server.started and not serving.done():
            await asyncio.sleep(0.005)
        if self._server.started:
            ready()
        await serving

    def _request_stop(self) -> None:
        self._server.should_exit = True


def start_http_server(
    service: ValidatorService, host: str = "127.0.0.1", port: int = 0
) -> HTTPServerThread:
    """Serve ``service`` over HTTP from a daemon thread; ``port=0`` picks a free port.

    Returns
    -------
    HTTPServerThread
        Running; read ``.port`` / ``.url``, call ``.stop()`` (or use ``with``) to end it.
    """
    return HTTPServerThread(service, host, port).start()
