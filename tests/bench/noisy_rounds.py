"""Fake machine readings for the benchmark scripts' tests: which of a RoundMeter's rounds the rest of the machine
disturbs is scripted, so a test can tell a rejected round from a kept one without a noisy neighbour."""

from __future__ import annotations

from collections.abc import Callable

from deployft.bench.quiet import RoundMeter


def script_noise(monkeypatch, noisy: Callable[[int], bool]) -> None:
    """From now on every RoundMeter reads fake clocks: each round lasts 1 s, and during round `i` of a meter
    (counted per meter from 0, rejected rounds included) other programs take a whole core when `noisy(i)`, far
    above any threshold, and nothing otherwise."""

    def reading(self: RoundMeter) -> tuple[float, float, float]:
        n = self.__dict__["_fake_readings"] = self.__dict__.get("_fake_readings", -1) + 1
        round_, finishing = divmod(n, 2)
        busy = sum(1.0 for i in range(round_) if noisy(i)) + (1.0 if finishing and noisy(round_) else 0.0)
        return float(n), busy, 0.0

    monkeypatch.setattr(RoundMeter, "_reading", reading)
