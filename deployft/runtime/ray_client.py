"""Whether `predict --ray` reaches its cluster through Ray Client (`ray://`), whose tasks run on the cluster: a
JSONL or CSV input is read in a task pinned to the driver's node, under Ray Client a node of the cluster, where
the file of this machine usually is not (`ray_source.py`)."""

from __future__ import annotations

import os

__all__ = ["CLIENT_INPUT", "client_address", "client_connected"]

CLIENT_INPUT = ("--input {} is a file on this machine, but through Ray Client ({}) a node of the cluster reads it, "
                "where it usually is not; run deployft on a node of the cluster (--ray-address auto or HOST:6379), "
                "or pass a .parquet file at a path every node mounts where this machine does")
"""A JSONL or CSV file is read in a task pinned to the driver's node: under Ray Client, a node of the cluster."""


def client_address(address: str | None) -> str | None:
    """Where `ray.init(address)` would be told to connect through Ray Client (`ray://host:10001`), as ray.init
    resolves it: `--ray-address ...`, or `RAY_ADDRESS=...` when the flag is left out or `auto`; None otherwise."""
    if address not in (None, "auto"):
        return f"--ray-address {address}" if "://" in address else None
    named = os.environ.get("RAY_ADDRESS")
    return f"RAY_ADDRESS={named}" if named and "://" in named else None


def client_connected() -> bool:
    """Whether this process reaches Ray through Ray Client, whose tasks run on the cluster, not on this machine."""
    import ray.util.client

    return ray.util.client.ray.is_connected()
