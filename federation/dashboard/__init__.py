"""The observability of a mesh: the metrics contract (`METRICS.md`), the built-in dashboard served by
each control plane (`model` pure, `app` its ASGI routes and scraper, `static/` the page), the Grafana
dashboards (`grafana/`) and the Prometheus scrape config and alert rules (`prometheus/`).

Never imported by `gateway`; imports nothing from the control plane either (it mounts us).
"""
