"""Errors of the registry, grouped by cause; `str()` is one line naming the field or address."""

from __future__ import annotations


class RegistryError(Exception):
    """Root of the registry's errors."""


class ValidationError(RegistryError, ValueError):
    """A value that does not fit the model: the message names the field."""


class UnknownCluster(RegistryError):
    """A cluster name the registry does not know."""


class RegistryUnavailable(RegistryError):
    """The backend cannot be reached; carries its address and a hint."""

    def __init__(self, address: str, reason: str, hint: str = "") -> None:
        self.address = address
        self.reason = reason
        self.hint = hint
        text = f"registry at {address} is unavailable: {reason}"
        super().__init__(f"{text} ({hint})" if hint else text)


class Conflict(RegistryError):
    """A transaction whose compare failed (someone else wrote first)."""


class Compacted(RegistryError):
    """A watch asked for a revision the backend has already compacted away."""

    def __init__(self, requested: int, compact_revision: int) -> None:
        self.requested = requested
        self.compact_revision = compact_revision
        super().__init__(f"revision {requested} is compacted (oldest kept: {compact_revision})")


class LeaseExpired(RegistryError):
    """A lease that no longer exists (expired or revoked): its keys are gone."""

    def __init__(self, lease: int) -> None:
        self.lease = lease
        super().__init__(f"lease {lease:#x} has expired or was revoked")


class DuplicateEndpoint(ValidationError):
    """An endpoint id that is already registered in the cluster."""
