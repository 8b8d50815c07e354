"""Domain errors: what a service refuses, without HTTP. The API maps each kind to a status code in
one place (``vms/api/__init__.py``), so services stay usable from the CLI, threads and tests."""

from __future__ import annotations


class DomainError(Exception):
    """A request the domain refuses; the message says why and is safe to show the caller."""


class NotFound(DomainError, LookupError):
    """The thing named does not exist (HTTP 404)."""


class Conflict(DomainError, ValueError):
    """The thing exists but is not in a state that allows this (HTTP 409)."""
