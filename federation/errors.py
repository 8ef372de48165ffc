"""Errors owned by the control plane and the command line.

Every package has one root error (`certs.errors.CertsError`, `registry.errors.RegistryError`,
`gateway.errors.GatewayError`, and `FederationError` here). Their `str()` is one line that
names the file, field or address at fault: the CLI prints it as is and exits 2.
"""

from __future__ import annotations


class FederationError(Exception):
    """Root of the control plane's errors."""


class ConfigError(FederationError):
    """A cluster config (TOML) that cannot be used: the message names the file and field."""


class UsageError(FederationError):
    """A command line that names something that does not exist or cannot be combined."""
