"""JSON values stored in jsonb (a message's sources and usage): refused up front when the store would give back
something else than was sent, or something the next read refuses."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from comps.chathistory.protocol import MessageIn


@pytest.mark.parametrize("number", [1e300, -1e20, 2.0**63])
def test_a_number_jsonb_would_give_back_as_an_integer_beyond_64_bits_is_refused(number: float) -> None:
    with pytest.raises(ValidationError, match="beyond 64 bits"):
        MessageIn(role="assistant", content="x", usage={"n": [{"deep": number}]})


def test_large_but_representable_numbers_are_kept() -> None:
    m = MessageIn(role="assistant", content="x", usage={"total_tokens": 2**62, "cost": 1e18, "tiny": 1e-300})
    assert m.usage == {"total_tokens": 2**62, "cost": 1e18, "tiny": 1e-300}
