"""llama.cpp's log callback: its warnings and errors reach our log at those levels; its loading chatter does not."""

from __future__ import annotations

import logging

import pytest

from comps.llm import engine

pytestmark = pytest.mark.unit


def test_only_warnings_and_errors_of_llama_cpp_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger=engine.log.name):
        engine._llama_log(2, b"llama_model_loader: - kv   0: general.architecture str = llama\n", None)  # INFO
        engine._llama_log(1, b"debug chatter\n", None)
        engine._llama_log(3, b"n_ctx_per_seq < n_ctx_train\n", None)
        engine._llama_log(4, b"failed to load\n", None)
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.WARNING, "llama.cpp: n_ctx_per_seq < n_ctx_train"),
        (logging.ERROR, "llama.cpp: failed to load"),
    ]
