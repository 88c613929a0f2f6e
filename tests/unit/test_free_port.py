"""`free_port` never hands out one port twice in a process, even when the kernel offers it again."""

from __future__ import annotations

import socket
from typing import Any, ClassVar

import pytest

from comps.runtime import process

pytestmark = pytest.mark.unit


class _Probe:
    """A socket whose bind(0) gets the next of ``offers`` (the kernel offering a just-closed port again)."""

    offers: ClassVar[list[int]] = []

    def __init__(self, *args: Any) -> None:
        self.port = 0

    def __enter__(self) -> _Probe:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def bind(self, address: tuple[str, int]) -> None:
        self.port = self.offers.pop(0)

    def getsockname(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)


def test_a_port_offered_again_is_passed_over(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(process, "_handed_out", set())
    monkeypatch.setattr(socket, "socket", _Probe)
    _Probe.offers = [47123, 47123, 47123, 50001, 47123, 50001, 50002]
    assert [process.free_port() for _ in range(3)] == [47123, 50001, 50002]


def test_real_ports_come_out_distinct_and_unbound() -> None:
    ports = [process.free_port() for _ in range(200)]
    assert len(set(ports)) == 200
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", ports[-1]))  # nothing holds it
