"""Failover drills: scenario files (TOML), the drill runner, its load generator, faults and reports.

A drill names a topology, runs steady load, injects faults on a timeline, restores them, and checks SLOs.
`scenarios` composes the other packages the way `federation` does (it drives a demo topology).
"""
