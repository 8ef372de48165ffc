"""The federated registry: the catalog model, its pure diff and merge, and the backends.

`registry` owns the words service, endpoint, export, peer, locality and catalog, and the
storage of them in a backend (sqlite by default, etcd or consul). It imports neither
`gateway` nor `federation`.
"""
