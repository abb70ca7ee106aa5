"""`ray_client.client_address`: only an address that `ray.init` would take for Ray Client is taken for one."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize("address, environment, client", [
    (None, None, None), ("auto", None, None), (None, "auto", None), (None, "127.0.0.1:6379", None),
    ("127.0.0.1:6379", "ray://head:10001", None),  # the flag wins over the environment, as in ray.init
    ("ray://head:10001", "127.0.0.1:6379", "--ray-address ray://head:10001"),
    ("auto", "ray://head:10001", "RAY_ADDRESS=ray://head:10001"),
])
def test_only_a_ray_client_address_is_taken_for_one(monkeypatch, address, environment, client):
    from deployft.runtime.ray_client import client_address

    if environment:
        monkeypatch.setenv("RAY_ADDRESS", environment)
    else:
        monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert client_address(address) == client
