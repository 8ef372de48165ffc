"""Tests of the dashboard, metrics contract and Grafana/Prometheus artefacts."""
