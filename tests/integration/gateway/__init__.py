"""Integration tests of the gateway: real sockets on loopback, real TLS, real upstreams."""
