"""Tests of the federation package (control plane, peering, sync)."""
