"""The gateway's errors, grouped by cause. Each carries what the edge needs: an HTTP status and
a reason string for `x-isthmus-reason`.
"""

from __future__ import annotations


class GatewayError(Exception):
    """Root of the gateway's errors."""

    status: int = 500
    reason: str = "internal"


class ConfigInvalid(GatewayError):
    """A gateway, policy or route config that cannot be used: the message names the field."""

    status = 500
    reason = "config-invalid"


class UpstreamError(GatewayError):
    """A failure talking to the chosen upstream; subclasses say how."""

    status = 502
    reason = "upstream"


class UpstreamConnectError(UpstreamError):
    status = 503
    reason = "upstream-connect"


class UpstreamReset(UpstreamError):
    status = 502
    reason = "upstream-reset"


class UpstreamTimeout(UpstreamError):
    status = 504
    reason = "upstream-timeout"


class NoHealthyEndpoint(GatewayError):
    status = 503
    reason = "no-endpoints"


class ClusterUnknown(GatewayError):
    status = 503
    reason = "cluster-unknown"


class ServiceUnknown(GatewayError):
    status = 404
    reason = "service-unknown"


class Forbidden(GatewayError):
    status = 403
    reason = "forbidden"


class Overloaded(GatewayError):
    """A circuit breaker is open or a retry budget is spent."""

    status = 503
    reason = "overflow"
