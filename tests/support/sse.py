"""Reading a whole server-sent-events body in tests, strictly."""

from __future__ import annotations


def sse_data(text: str) -> list[str]:
    """The data of each event, checking the framing: every event is exactly ``data: <payload>\\n\\n``."""
    assert text.endswith("\n\n"), text[-200:]
    blocks = text[:-2].split("\n\n")
    for block in blocks:
        assert block.startswith("data: ") and "\n" not in block, block
    return [b[len("data: ") :] for b in blocks]
