"""Unit tests of the data plane (pure, no sockets)."""
