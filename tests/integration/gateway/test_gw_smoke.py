"""Smoke: one HTTP/1.1 request crosses two gateways."""

from __future__ import annotations

import httpx


async def test_http1_request_crosses_two_gateways(topology):
    async with httpx.AsyncClient(base_url=topology.outbound) as client:
        response = await client.get("/headers", headers={"host": "echo.demo"})
    assert response.status_code == 200, (response.text, response.headers)
    assert response.headers["x-isthmus-cluster"] == "west-1"
    body = response.json()
    names = dict(body["headers"])
    assert names["x-isthmus-peer-identity"] == "spiffe://mesh.example/cluster/east-1/gateway"
    assert "x-request-id" in names
