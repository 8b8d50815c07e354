"""Domain errors: what a service refuses, without HTTP. The API maps each kind to a status code in
one place (``DOMAIN_STATUS`` in ``vms/api/status.py``), so services stay usable from the CLI,
threads and tests, and a service never decides how a refusal looks on the wire."""

from __future__ import annotations


class DomainError(Exception):
    """A request the domain refuses; the message says why and is safe to show the caller."""


class NotFound(DomainError, LookupError):
    """The thing named does not exist (HTTP 404)."""


class Conflict(DomainError, ValueError):
    """The thing exists but is not in a state that allows this (HTTP 409)."""


class Invalid(DomainError, ValueError):
    """The request names something impossible, e.g. a range that ends before it starts (HTTP 422)."""


class TooLarge(DomainError):
    """More than the hub takes at once (HTTP 413)."""


class NoSpace(DomainError):
    """The hub's disk cannot hold it now; retry later (HTTP 507)."""


class Unsupported(DomainError):
    """A protocol version this hub does not speak; the peer must upgrade (HTTP 426)."""


class Unavailable(DomainError):
    """A part the request needs is down for now, e.g. the store (HTTP 503)."""


class Forbidden(DomainError):
    """The caller's token is valid but this is not theirs to do, e.g. another officer's hold (HTTP 403)."""


class Busy(DomainError):
    """Too many at once or too often from this caller; retry after ``retry_after_s`` (HTTP 429)."""

    def __init__(self, message: str, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
