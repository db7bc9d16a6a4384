"""The errors every service boundary speaks (torch-free, grpc-free).

Engines raise them, the gRPC servicers map them to status codes (``code`` is the name of a
``grpc.StatusCode``), and the gRPC clients turn a failed call back into the same class. So the
gateway's step loop handles one vocabulary of failures whether it drives the services over gRPC
or in process: a caller error, an unknown sequence, exhausted capacity, a service that cannot
answer now.
"""
from __future__ import annotations


class ServiceError(Exception):
    """A failure a service reports to its caller; ``code`` names the gRPC status."""

    code = "INTERNAL"


class InvalidRequest(ServiceError, ValueError):
    """A caller error naming the offending field (HTTP 400 / INVALID_ARGUMENT)."""

    code = "INVALID_ARGUMENT"

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}")
        self.field = field_name

    @property
    def reason(self) -> str:
        """The message without the field prefix."""
        return str(self).split(": ", 1)[-1]


class UnknownSequence(ServiceError, KeyError):
    """A sequence id the service does not hold (NOT_FOUND)."""

    code = "NOT_FOUND"

    def __str__(self) -> str:  # KeyError would print the repr of its argument
        return str(self.args[0]) if self.args else "unknown sequence"


class ResourceExhausted(ServiceError):
    """Not enough capacity (KV blocks, sequence slots) now; retrying later may work."""

    code = "RESOURCE_EXHAUSTED"


class Unauthenticated(ServiceError):
    """The caller did not present a token the service accepts (``specgrove.auth``)."""

    code = "UNAUTHENTICATED"


class PermissionDenied(ServiceError):
    """The caller is known but may not do this (PERMISSION_DENIED / HTTP 403): a drafter
    outside the draft service's load allow-list."""

    code = "PERMISSION_DENIED"


class Unavailable(ServiceError):
    """The service cannot answer now: loading, down, unreachable, or past the deadline."""

    code = "UNAVAILABLE"


def from_status(code_name: str, message: str) -> ServiceError:
    """The error a gRPC status stands for (the client side of the mapping)."""
    if code_name == "INVALID_ARGUMENT":
        return InvalidRequest(*_split_field(message))
    if code_name == "NOT_FOUND":
        return UnknownSequence(message)
    if code_name == "RESOURCE_EXHAUSTED":
        return ResourceExhausted(message)
    if code_name == "PERMISSION_DENIED" and "allow" in message:
        return PermissionDenied(message)
    if code_name in ("UNAUTHENTICATED", "PERMISSION_DENIED"):
        return Unauthenticated(f"{message or code_name} (check --service-token / SPECGROVE_SERVICE_TOKEN)")
    if code_name in ("UNAVAILABLE", "DEADLINE_EXCEEDED", "CANCELLED", "UNKNOWN", "ABORTED"):
        return Unavailable(message or code_name)
    return ServiceError(message or code_name)


def _split_field(message: str) -> tuple[str, str]:
    field_name, sep, rest = message.partition(": ")
    if sep and field_name and " " not in field_name:
        return field_name, rest
    return "request", message
