"""The mesh PKI: SPIFFE identities for every gateway and control plane.

`certs` owns the root CA of a trust domain, one intermediate CA per cluster, the
leaf certificates (X509-SVIDs) they issue, the trust bundle, the `ssl.SSLContext`
factories for mutual TLS, the post-handshake SPIFFE rules and certificate rotation.

Modules: `spiffe` (pure ID parsing), `errors`, `files` (on-disk layout, atomic writes,
PEM reading), `pki` (issuing CAs and leaves), `store` (loading identities and bundles),
`chain` (pure chain rules), `tls` (contexts, peer identity, handshake error reasons),
`rotation` (renewal deadline, `ContextHolder`, `serve_renewer`) and `testing`
(`make_pki` for other packages' tests).

`certs` never imports `gateway`, `federation` or `registry`.
"""
