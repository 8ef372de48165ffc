"""Unit tests of the traffic-policy modules: route rules, route table, faults, trace context, access log."""
