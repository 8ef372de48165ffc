"""Failover decision logic: pure modules, one concern each, that the gateway's I/O calls per request.

- `policy`: validated, frozen per-service policy values and their defaults (`ServicePolicy`).
- `priority`: locality priorities and Envoy's priority-load arithmetic (spill-over, panic).
- `p2c`: weighted power-of-two-choices least-request inside one priority.
- `outlier`: the passive outlier detector (consecutive 5xx / gateway errors, ejection, return).
- `health`: active health-check state and gateway-pair probe state.
- `circuit`: the circuit breaker per upstream cluster.
- `retry`: the retry budget and a request's retry state.
- `balancer`: the composition the gateway holds per service (`Balancer`).
- `testing`: a simulated fleet and clock-free simulator for scenario tests and benchmarks.

Nothing in this package imports trio, reads a clock or opens a socket: time (`now`, seconds on
trio's clock) and randomness (`random.Random`) are arguments. A unit test enforces it.
"""
