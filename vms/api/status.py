"""The one place where the domain's answers become HTTP statuses.

Refusals raised as domain errors (vms/errors.py) by their kind (``DOMAIN_STATUS``, used by the
API's one handler), and a segment upload's :class:`Result`, which the store reports as a value.
"""

from __future__ import annotations

from vms.archive.store import Result
from vms.errors import (
    Busy,
    Conflict,
    DomainError,
    Forbidden,
    Invalid,
    NoSpace,
    NotFound,
    TooLarge,
    Unavailable,
    Unsupported,
)

#: A segment upload's outcome (main or sub stream) as the status the agent acts on (edge_agent/uplink.py):
#: 201/200 it lets the segment go, 409/413 it sets it aside, 400 it re-checks and resends, 507/503 it retries.
RESULT_STATUS: dict[Result, int] = {
    Result.STORED: 201,
    Result.DUPLICATE: 200,
    Result.BAD_CHECKSUM: 400,
    Result.CONFLICT: 409,
    Result.TOO_LARGE: 413,
    Result.BAD_RANGE: 422,
    Result.DISK_FULL: 507,
    Result.STORE_ERROR: 503,
}


def http_status(result: Result) -> int:
    return RESULT_STATUS[result]


#: Domain errors by kind; the first that matches wins, anything else is 400.
DOMAIN_STATUS: tuple[tuple[type[DomainError], int], ...] = (
    (NotFound, 404), (Conflict, 409), (Invalid, 422), (TooLarge, 413), (NoSpace, 507), (Unavailable, 503),
    (Unsupported, 426), (Forbidden, 403), (Busy, 429),
)


def error_status(exc: DomainError) -> int:
    """The status the API answers ``exc`` with: its kind's in ``DOMAIN_STATUS``, else 400."""
    return next((code for kind, code in DOMAIN_STATUS if isinstance(exc, kind)), 400)
