"""The data plane: mTLS listeners, HTTP/1.1 (h11), HTTP/2 (h2), TCP; router, balancer, health,
outlier detection, upstream pools and metrics.

`gateway` imports `certs` (identities, TLS contexts) and `registry` (the catalog model); it never
imports `federation`.
"""
