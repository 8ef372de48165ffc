"""The federated registry: the catalog model, its pure diff and merge, and the backends.

`registry` owns the words service, endpoint, export, peer, locality and catalog, and the
storage of them in a backend (sqlite by default, etcd or consul). It imports neither
`gateway` nor `federation`.

Modules: `model` (frozen, validated values), `codec` (their JSON), `diff` (pure diff, apply,
merge, export view), `backoff` (pure retry schedule), `backend` (the async interface),
`sqlite` / `etcd` / `consul` (the backends), `url` (`open_backend(url)`, following a catalog
through outages), `store` (key layout, registration, catalogs and watches over any backend),
`testing` (`FakeBackend` and the conformance suite `check_backend`), `errors`.
"""
