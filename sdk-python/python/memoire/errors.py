"""The SDK's exceptions: one class per kind of failure, all under :class:`MemoireError`."""

from __future__ import annotations

from typing import Optional


class MemoireError(Exception):
    """A Mémoire call failed."""

    kind = "other"

    def __init__(self, message: str, field: Optional[str] = None) -> None:
        super().__init__(message)
        self.message = message
        #: For :class:`InvalidArgumentError`: the request field the server named.
        self.field = field


class ConfigurationError(MemoireError):
    """The endpoint or API key cannot be used."""

    kind = "configuration"


class TimeoutError(MemoireError):  # noqa: A001 - the SDK's own, a MemoireError
    """The call's deadline passed."""

    kind = "timeout"


class UnavailableError(MemoireError):
    """The service (or its database) cannot be reached."""

    kind = "unavailable"


class InvalidArgumentError(MemoireError):
    """The request was rejected; ``field`` names the offending field."""

    kind = "invalid_argument"


class UnauthenticatedError(MemoireError):
    """Missing, wrong or revoked API key."""

    kind = "unauthenticated"


class PermissionDeniedError(MemoireError):
    """The key's role does not allow the call."""

    kind = "permission_denied"


class NotFoundError(MemoireError):
    """No such memory, tenant or key."""

    kind = "not_found"


class AlreadyExistsError(MemoireError):
    """It already exists."""

    kind = "already_exists"


class FailedPreconditionError(MemoireError):
    """The state does not allow the call."""

    kind = "failed_precondition"


class ResourceExhaustedError(MemoireError):
    """A quota or rate limit."""

    kind = "resource_exhausted"


class UnimplementedError(MemoireError):
    """The server does not implement the call."""

    kind = "unimplemented"


_BY_KIND = {
    cls.kind: cls
    for cls in (
        ConfigurationError, TimeoutError, UnavailableError, InvalidArgumentError,
        UnauthenticatedError, PermissionDeniedError, NotFoundError, AlreadyExistsError,
        FailedPreconditionError, ResourceExhaustedError, UnimplementedError,
    )
}


def from_native(kind: str, message: str, field: Optional[str]) -> MemoireError:
    """The exception for an error the native module described as (kind, message, field)."""
    return _BY_KIND.get(kind, MemoireError)(message, field)
