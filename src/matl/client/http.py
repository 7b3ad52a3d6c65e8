"""HTTP transports of the client SDK: each op becomes a call to the validator's REST API.

:class:`HTTPTransport` (``httpx.Client``) and :class:`AsyncHTTPTransport` (``httpx.AsyncClient``)
implement :class:`~matl.client.transport.Transport` and
:class:`~matl.client.transport.AsyncTransport`. A server-reported error is raised as the
:class:`~matl.errors.ServiceError` subclass its ``code`` names; a connection failure or timeout
as :class:`~matl.errors.TransportError`.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import httpx

from matl._closing import AsyncClosing, Closing
from matl.client.transport import Response
from matl.crypto import canonical_json
from matl.errors import MATLError, ServiceError, TransportError, error_from_code

__all__ = ["AsyncHTTPTransport", "HTTPTransport"]

_USER_AGENT = "matl-client/1"
_OCTET = "application/octet-stream"


@dataclass(frozen=True)
class _Call:
    """One HTTP request that carries out an op."""

    method: str
    path: str
    params: dict[str, Any] = field(default_factory=dict)
    json: Any = None
    content: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)


def _field(body: dict[str, Any], name: str) -> Any:
    if name not in body:
        raise error_from_code("malformed_payload", f"request body needs {name!r}")
    return body[name]


def _segment(value: Any) -> str:
    return quote(str(value), safe=":")


def _header_value(header: Any) -> str:
    if not isinstance(header, dict):
        raise error_from_code("malformed_payload", "submission 'header' must be an object")
    return base64.urlsafe_b64encode(canonical_json(header)).rstrip(b"=").decode("ascii")


def _call_for(op: str, body: dict[str, Any], payload: bytes | None) -> _Call:
    """The HTTP request that carries out ``op`` (the route table of :mod:`matl.server.http`)."""
    if op == "register":
        return _Call("POST", "/v1/nodes", json=body)
    if op == "submit":
        headers = {
            "X-MATL-Header": _header_value(_field(body, "header")),
            "X-MATL-Signature": str(_field(body, "signature")),
            "Content-Type": _OCTET,
        }
        return _Call(
            "POST", "/v1/rounds/current/submissions", content=payload or b"", headers=headers
        )
    if op == "round":
        return _Call("GET", "/v1/rounds/current")
    if op == "model":
        return _Call("GET", "/v1/model")
    if op == "verdict":
        return _Call("GET", f"/v1/verdicts/{_segment(_field(body, 'gradient_hash'))}")
    if op == "trusted":
        params = {"min_score": body["min_score"]} if body.get("min_score") is not None else {}
        return _Call("GET", f"/v1/rounds/{_segment(_field(body, 'round'))}/trusted", params)
    if op == "reputation":
        return _Call("GET", f"/v1/nodes/{_segment(_field(body, 'node_id'))}/reputation")
    if op == "receipt":
        rnd, node = _segment(_field(body, "round")), _segment(_field(body, "node_id"))
        return _Call("GET", f"/v1/rounds/{rnd}/receipts/{node}")
    if op == "close_round":
        return _Call("POST", "/v1/rounds/current/close")
    if op == "info":
        return _Call("GET", "/v1/info")
    raise error_from_code("bad_request", f"the HTTP transport has no op {op!r}")


def _model_body(response: httpx.Response) -> dict[str, Any]:
    packed = response.headers.get("X-MATL-Body")
    if packed:
        body = json.loads(base64.urlsafe_b64decode(packed + "=" * (-len(packed) % 4)))
        if isinstance(body, dict):
            return body
    return {
        "round": int(response.headers["X-MATL-Round"]),
        "dim": int(response.headers["X-MATL-Dim"]),
        "gradient_hash": response.headers["X-MATL-Gradient-Hash"],
    }


def _error_for(response: httpx.Response) -> MATLError:
    """The exception a non-2xx reply stands for."""
    try:
        detail = response.json()["error"]
        return error_from_code(str(detail["code"]), str(detail["message"]))
    except (ValueError, KeyError, TypeError):
        pass
    text = response.text[:200]
    if response.status_code >= 500:  # e.g. a proxy in front of the validator
        return TransportError(f"HTTP {response.status_code} from {response.url}: {text}")
    return ServiceError(f"HTTP {response.status_code} from {response.url}: {text}")


def _parse(op: str, response: httpx.Response) -> Response:
    if not response.is_success:
        raise _error_for(response)
    try:
        if op == "model":
            return Response(_model_body(response), response.content)
        return Response(response.json())
    except (ValueError, KeyError) as exc:
        raise TransportError(f"unreadable reply to {op!r} from {response.url}: {exc}") from None


def _transport_error(op: str, base_url: str, exc: httpx.HTTPError) -> TransportError:
    if isinstance(exc, httpx.TimeoutException):
        return TransportError(f"{op!r} to {base_url} timed out ({type(exc).__name__})")
    return TransportError(f"{op!r} to {base_url} failed: {type(exc).__name__}: {exc}")


def _client_options(base_url: str, headers: dict[str, str] | None) -> dict[str, Any]:
    """Keyword arguments of the ``httpx`` client of a transport."""
    return {
        "base_url": base_url,
        "headers": {"User-Agent": _USER_AGENT, **(headers or {})},
        "trust_env": False,
    }


def _build_request(
    client: httpx.Client | httpx.AsyncClient,
    op: str,
    body: dict[str, Any],
    payload: bytes | None,
    timeout: float,
) -> httpx.Request:
    """The request that carries out ``op`` on ``client`` (no IO: the caller sends it)."""
    call = _call_for(op, body, payload)
    return client.build_request(
        call.method,
        call.path,
        params=call.params,
        json=call.json,
        content=call.content,
        headers=call.headers,
        timeout=timeout,
    )


class HTTPTransport(Closing):
    """Synchronous transport over the validator's REST API.

    Parameters
    ----------
    base_url:
        The server, e.g. ``http://127.0.0.1:8000``.
    headers:
        Extra headers sent with every request (e.g. ``Authorization`` for a proxy).

    Examples
    --------
    >>> t = HTTPTransport("http://127.0.0.1:8000")  # doctest: +SKIP
    >>> t.request("round", {}, timeout=5.0).body["round"]  # doctest: +SKIP
    0
    """

    def __init__(self, base_url: str, *, headers: dict[str, str] | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self._client = httpx.Client(**_client_options(self.base_url, headers))

    def request(
        self, op: str, body: dict[str, Any], payload: bytes | None = None, *, timeout: float
    ) -> Response:
        """Carry out ``op``; see :class:`~matl.client.transport.Transport`."""
        request = _build_request(self._client, op, body, payload, timeout)
        try:
            response = self._client.send(request)
        except httpx.HTTPError as exc:
            raise _transport_error(op, self.base_url, exc) from exc
        return _parse(op, response)

    def close(self) -> None:
        """Close the connection pool."""
        self._client.close()


class AsyncHTTPTransport(AsyncClosing):
    """Asynchronous transport over the validator's REST API (see :class:`HTTPTransport`)."""

    def __init__(self, base_url: str, *, headers: dict[str, str] | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self._client = httpx.AsyncClient(**_client_options(self.base_url, headers))

    async def request(
        self, op: str, body: dict[str, Any], payload: bytes | None = None, *, timeout: float
    ) -> Response:
        """Carry out ``op``; see :class:`~matl.client.transport.AsyncTransport`."""
        request = _build_request(self._client, op, body, payload, timeout)
        try:
            response = await self._client.send(request)
        except httpx.HTTPError as exc:
            raise _transport_error(op, self.base_url, exc) from exc
        return _parse(op, response)

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._client.aclose()
