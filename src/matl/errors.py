"""The MATL exception hierarchy.

Every error MATL raises on purpose derives from :class:`MATLError`, so a caller can catch the
library's errors without catching unrelated ones. Errors that are also ordinary Python value or
key errors derive from those too, so ``except ValueError`` keeps working.
"""

from __future__ import annotations


class MATLError(Exception):
    """Base class of every error MATL raises on purpose."""


class ConfigError(MATLError, ValueError):
    """A configuration key or value is unknown or invalid."""


class PreconditionError(MATLError, ValueError):
    """An aggregation rule's precondition on (n, f) does not hold.

    The message names the rule, n, f and the condition, e.g. ``krum needs n >= 2f + 3``.
    """


class UnknownNameError(MATLError, KeyError):
    """A registry lookup (rule, attack, dataset, model) used a name that is not registered."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""


class RegistryClashError(MATLError, ValueError):
    """Two components tried to register under the same name."""


class DatasetUnavailableError(MATLError, FileNotFoundError):
    """A dataset's files or the package that ships them are missing; the message says how to fix it."""


class ServiceError(MATLError):
    """A request to the validator service was refused.

    Every subclass carries a stable machine ``code`` and the HTTP ``status`` that the HTTP
    transport answers with; the gRPC and WebSocket transports send the same ``code``, and the
    client SDK rebuilds the same exception class with :func:`error_from_code`.
    """

    status: int = 400
    code: str = "bad_request"


class AuthenticationError(ServiceError):
    """A submission's signature is missing or does not verify against the node's key."""

    status = 401
    code = "bad_signature"


class UnknownNodeError(ServiceError):
    """The node is not registered, or registration is closed to it (allow-list policy)."""

    status = 403
    code = "unknown_node"


class NotFoundError(ServiceError, KeyError):
    """An unknown gradient hash, round or node was asked for."""

    status = 404
    code = "not_found"

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class ReplayError(ServiceError):
    """The node already submitted in this round (a replayed or duplicate submission)."""

    status = 409
    code = "replay"


class WrongRoundError(ServiceError):
    """The submission names a round other than the one the validator has open."""

    status = 409
    code = "wrong_round"


class PayloadTooLargeError(ServiceError):
    """The payload or its metadata is over the validator's configured size limit."""

    status = 413
    code = "payload_too_large"


class MalformedPayloadError(ServiceError):
    """The payload is not a well-formed MATL safetensors envelope."""

    status = 400
    code = "malformed_payload"


class InvalidUpdateError(ServiceError, ValueError):
    """Client updates are malformed: wrong shape or dtype, or containing NaN/Inf."""

    status = 422
    code = "invalid_update"


class TransportError(MATLError, ConnectionError):
    """The client could not reach the validator, or the request timed out."""


def error_from_code(code: str, message: str) -> MATLError:
    """Rebuild the :class:`ServiceError` subclass a server reported by its ``code``."""
    for cls in _SERVICE_ERRORS:
        if cls.code == code:
            return cls(message)
    return ServiceError(f"{code}: {message}")


_SERVICE_ERRORS: tuple[type[ServiceError], ...] = (
    AuthenticationError,
    UnknownNodeError,
    NotFoundError,
    ReplayError,
    WrongRoundError,
    PayloadTooLargeError,
    MalformedPayloadError,
    InvalidUpdateError,
    ServiceError,
)
