"""Isthmus control plane and composition root.

`federation` owns the cluster config, the `isthmus` command line, the control-plane API,
peering tokens, catalog sync between clusters and the dashboard. It is the only package
that imports all the others (`certs`, `registry`, `gateway`); none of them imports it.
"""
