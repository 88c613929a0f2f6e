"""Batched llama.cpp generation: one engine thread owns the llama context and serves every sequence.

Each step gathers one token from every sequence that is generating, plus prompt chunks of newly
admitted ones (up to ``n_batch`` tokens in all), into a single ``llama_decode`` call; then it samples
the next token of each sequence with that sequence's own sampler chain. Every sequence has its own
KV-cache stream (``n_seq_max = parallel``, not unified), so each one gets the full ``n_ctx`` window.

Prompt cache: a slot keeps the KV cache of its last finished sequence, and a new sequence goes to
the free slot whose cached tokens share the longest prefix with its prompt, so only the rest of
the prompt is decoded (a multi-turn chat, or a fixed system prompt, is read once).

The asyncio side talks to the thread through `submit` / `cancel` (thread-safe); results come back
through the sequence's ``emit`` callback, called on the engine thread (the backend bridges it to
the event loop with ``loop.call_soon_threadsafe``). A cancelled sequence leaves the batch before the
next step: its slot's KV cache is cleared and the slot freed.

Failures: an exception while admitting, sampling or detokenising one sequence fails that sequence only
(it gets the error, its slot is cleared and freed); the engine goes on with the others. Only a failure of
the engine's own bookkeeping ends the thread: then ``error`` is set, every waiting sequence gets the
error, and ``on_death`` is called (the backend makes the process exit, so its supervisor restarts it).
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import llama_cpp as L

from comps.core.errors import ServiceError
from comps.llm.backends import Delta, Event, Finished
from comps.llm.protocol import FinishReason
from comps.llm.text import TextStream

log = logging.getLogger("comps.llm.engine")

_PENALTY_LAST_N = 64  # tokens the presence/frequency penalties look back on (llama.cpp's default)


class EngineError(ServiceError):
    """llama.cpp failed while generating."""

    status_code = 500
    error_type = "internal_error"


@dataclass(frozen=True, slots=True)
class SamplingParams:
    max_tokens: int
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    seed: int | None = None  # None = random
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0  # 1 = off
    stop: tuple[str, ...] = ()
    stop_on_repetition: bool = False  # end before a whole sentence comes a second time


class Slot:
    """One KV-cache stream (llama.cpp sequence id) and the tokens it holds."""

    __slots__ = ("seq_id", "tokens")

    def __init__(self, seq_id: int) -> None:
        self.seq_id = seq_id
        self.tokens: list[int] = []


def common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


class Sequence:
    """One request inside the engine; after `Engine.submit` only the engine thread changes it
    (except ``cancelled``, which any thread may set through `Engine.cancel`)."""

    __slots__ = (
        "cached",
        "cancelled",
        "emit",
        "generated",
        "next_token",
        "params",
        "pos",
        "prompt",
        "sampler",
        "seq_id",
        "slot",
        "text",
    )

    def __init__(self, prompt: list[int], params: SamplingParams, emit: Callable[[Event | Exception], None]) -> None:
        self.prompt = prompt
        self.params = params
        self.emit = emit
        self.cancelled = False
        self.slot: Slot  # set when admitted, like text
        self.seq_id = -1
        self.pos = 0  # tokens of this sequence in the KV cache
        self.cached = 0  # prompt tokens found in the slot's cache
        self.next_token = -1  # sampled, not yet decoded; -1 while the prompt is being read
        self.generated = 0
        self.sampler: Any = None  # the llama_sampler chain while admitted
        self.text: TextStream


_backend_lock = threading.Lock()
_backend_ready = False


# enum ggml_log_level of the llama.cpp this wheel vendors: NONE 0, DEBUG 1, INFO 2, WARN 3, ERROR 4, CONT 5
# (llama-cpp-python's own _logger.py still lists the older numbering, where 2 and 3 were WARN and ERROR).
_GGML_WARN, _GGML_ERROR = 3, 4


def _llama_log(level: int, text: bytes, _user: ctypes.c_void_p) -> None:
    """llama.cpp's warnings and errors go to our log; its chatter (model loading info) does not."""
    if level in (_GGML_WARN, _GGML_ERROR) and text:
        log.log(
            logging.WARNING if level == _GGML_WARN else logging.ERROR,
            "llama.cpp: %s",
            text.decode("utf-8", "replace").rstrip(),
        )


_LOG_CALLBACK = L.llama_log_callback(_llama_log)  # kept alive for the life of the process


def _init_backend() -> None:
    global _backend_ready  # noqa: PLW0603 - llama.cpp is initialised once per process
    with _backend_lock:
        if not _backend_ready:
            L.llama_log_set(_LOG_CALLBACK, ctypes.c_void_p())
            L.llama_backend_init()
            _backend_ready = True


class Engine:
    """Loads the GGUF (blocking: call from a worker thread), then serves sequences from its thread."""

    def __init__(
        self,
        model_path: Path,
        *,
        n_ctx: int,
        n_batch: int,
        parallel: int,
        n_threads: int = 0,
        n_gpu_layers: int = 0,
        use_extra_bufts: bool = False,
    ) -> None:
        _init_backend()
        if not model_path.is_file():
            raise FileNotFoundError(f"model file {model_path} does not exist (run `chatqna models fetch`)")
        mparams = L.llama_model_default_params()
        mparams.n_gpu_layers = n_gpu_layers
        mparams.use_extra_bufts = use_extra_bufts
        self._model = L.llama_model_load_from_file(str(model_path).encode(), mparams)
        if not self._model:
            raise RuntimeError(f"llama.cpp could not load {model_path}")
        self._vocab = L.llama_model_get_vocab(self._model)
        threads = n_threads or os.cpu_count() or 1
        cparams = L.llama_context_default_params()
        cparams.n_ctx = n_ctx * parallel
        cparams.n_seq_max = parallel
        cparams.kv_unified = False
        cparams.n_batch = n_batch
        cparams.n_ubatch = min(n_batch, 512)
        cparams.n_threads = threads
        cparams.n_threads_batch = threads
        self._ctx = L.llama_init_from_model(self._model, cparams)
        if not self._ctx:
            L.llama_model_free(self._model)
            raise RuntimeError(f"llama.cpp could not create a context of {n_ctx} x {parallel} tokens")
        self._mem = L.llama_get_memory(self._ctx)
        self.n_ctx = L.llama_n_ctx_seq(self._ctx)
        self.parallel = parallel
        self.n_batch = n_batch
        self.n_threads = threads
        self.n_vocab = L.llama_vocab_n_tokens(self._vocab)
        self.path = Path(model_path)
        self.quantisation = _quantisation(self._model)
        if self.n_ctx > L.llama_model_n_ctx_train(self._model):
            log.warning(
                "n_ctx %d is above the %d tokens the model was trained on",
                self.n_ctx,
                L.llama_model_n_ctx_train(self._model),
            )
        self._batch = L.llama_batch_init(n_batch, 0, 1)
        self._pieces: dict[int, bytes] = {}
        self.bos_token = self.token_text(L.llama_vocab_bos(self._vocab))
        self.eos_token = self.token_text(L.llama_vocab_eos(self._vocab))
        self._add_bos = bool(L.llama_vocab_get_add_bos(self._vocab))
        self._cond = threading.Condition()
        self._inbox: list[Sequence] = []
        self._stopping = False
        self._pending: deque[Sequence] = deque()
        self._active: list[Sequence] = []
        self._free_slots = [Slot(i) for i in range(parallel)]
        self.error: BaseException | None = None
        self.on_death: Callable[[BaseException], None] | None = None  # called on the engine thread
        self._thread = threading.Thread(target=self._run, name="llm-engine", daemon=True)

    # ---- model facts (thread-safe: the vocabulary is read-only) ----

    @property
    def slots_in_use(self) -> int:
        """Sequences holding a slot now (read without the lock: a snapshot for reports)."""
        return self.parallel - len(self._free_slots)

    def chat_template(self) -> str | None:
        raw = L.llama_model_chat_template(self._model, None)
        return raw.decode("utf-8") if raw else None

    def token_text(self, token: int) -> str:
        if token < 0:
            return ""
        return self._piece(token, special=True).decode("utf-8", "replace")

    def tokenize(self, text: str) -> list[int]:
        """Prompt tokens: special tokens parsed, BOS added if the model wants one and the text lacks it."""
        data = text.encode("utf-8")
        add_bos = self._add_bos and not (self.bos_token and text.startswith(self.bos_token))
        cap = len(data) + 8
        buf = (L.llama_token * cap)()
        n = L.llama_tokenize(self._vocab, data, len(data), buf, cap, add_bos, True)
        if n < 0:
            cap = -n
            buf = (L.llama_token * cap)()
            n = L.llama_tokenize(self._vocab, data, len(data), buf, cap, add_bos, True)
        return list(buf[:n])

    def _piece(self, token: int, special: bool = False) -> bytes:
        buf = ctypes.create_string_buffer(64)
        n = L.llama_token_to_piece(self._vocab, token, buf, 64, 0, special)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = L.llama_token_to_piece(self._vocab, token, buf, -n, 0, special)
        return buf.raw[:n]

    # ---- the asyncio side ----

    def start(self) -> None:
        self._thread.start()

    def alive(self) -> bool:
        return self._thread.is_alive() and self.error is None

    def submit(self, seq: Sequence) -> None:
        with self._cond:
            if self._stopping or not self._thread.is_alive():
                raise EngineError("the generation engine is not running")
            self._inbox.append(seq)
            self._cond.notify()

    def cancel(self, seq: Sequence) -> None:
        seq.cancelled = True
        with self._cond:
            self._cond.notify()

    def close(self) -> None:
        """Stop the thread (in-flight sequences get an error) and free llama.cpp's memory."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread.is_alive():
            self._thread.join()
        elif self._ctx:  # never started
            self._free()

    # ---- the engine thread ----

    def _run(self) -> None:
        try:
            while True:
                with self._cond:
                    while not (self._stopping or self._inbox or self._active or self._pending):
                        self._cond.wait()
                    if self._stopping:
                        break
                    self._pending.extend(self._inbox)
                    self._inbox.clear()
                self._drop_cancelled()
                self._admit()
                if self._active:
                    self._step()
        except BaseException as exc:  # the engine is dead: say so to everyone, readiness turns 503
            self.error = exc
            log.exception("the generation engine stopped")
        finally:
            with self._cond:
                self._stopping = True
                leftovers = self._active + list(self._pending) + self._inbox
                self._inbox.clear()
            reason = f"the generation engine stopped: {self.error}" if self.error else "the service is shutting down"
            for seq in leftovers:
                seq.emit(EngineError(reason))
            if self.error is None:
                self._free()
            elif self.on_death is not None:  # the model stays loaded (tokenize may still be called) until close()
                self.on_death(self.error)

    def _free(self) -> None:
        for seq in self._active:
            if seq.sampler is not None:
                L.llama_sampler_free(seq.sampler)
                seq.sampler = None
        self._active.clear()
        self._pending.clear()
        if self._batch is not None:
            L.llama_batch_free(self._batch)
            self._batch = None
        if self._ctx:
            L.llama_free(self._ctx)
            self._ctx = None
        if self._model:
            L.llama_model_free(self._model)
            self._model = None

    def _drop_cancelled(self) -> None:
        if any(seq.cancelled for seq in self._pending):
            self._pending = deque(seq for seq in self._pending if not seq.cancelled)
        for seq in [s for s in self._active if s.cancelled]:
            self._remove(seq)

    def _fail(self, seq: Sequence, exc: Exception) -> None:
        """``seq`` broke (not the engine): it gets the error, leaves the batch, and its slot is cleared."""
        log.error("generation of one sequence failed: %s: %s", type(exc).__name__, exc, exc_info=exc)
        seq.emit(EngineError(f"generation failed: {type(exc).__name__}: {exc}"))
        if seq in self._active:
            self._remove(seq)

    def _admit(self) -> None:
        while self._pending and self._free_slots:
            seq = self._pending.popleft()
            try:
                self._admit_one(seq)
            except Exception as exc:  # one sequence broke, not the engine
                self._fail(seq, exc)

    def _admit_one(self, seq: Sequence) -> None:
        # The slot with the longest cached prefix of this prompt; on a tie the lowest id (see _step).
        slot = max(self._free_slots, key=lambda s: (common_prefix(s.tokens, seq.prompt), -s.seq_id))
        self._free_slots.remove(slot)
        seq.slot, seq.seq_id = slot, slot.seq_id
        self._active.append(seq)  # from here on a failure frees the slot again (`_fail`)
        keep = min(common_prefix(slot.tokens, seq.prompt), len(seq.prompt) - 1)  # >= 1 token to decode
        if not L.llama_memory_seq_rm(self._mem, slot.seq_id, keep, -1):  # e.g. recurrent models
            L.llama_memory_seq_rm(self._mem, slot.seq_id, -1, -1)
            keep = 0
        del slot.tokens[keep:]
        seq.pos, seq.cached = keep, keep
        seq.sampler = self._make_sampler(seq.params)
        seq.text = TextStream(list(seq.params.stop), stop_repeats=seq.params.stop_on_repetition)

    def _make_sampler(self, p: SamplingParams) -> Any:
        chain = L.llama_sampler_chain_init(L.llama_sampler_chain_default_params())
        if p.presence_penalty or p.frequency_penalty or p.repetition_penalty != 1.0:
            L.llama_sampler_chain_add(
                chain,
                L.llama_sampler_init_penalties(
                    self.n_vocab, _PENALTY_LAST_N, p.repetition_penalty, p.frequency_penalty, p.presence_penalty
                ),
            )
        if p.temperature <= 0:
            L.llama_sampler_chain_add(chain, L.llama_sampler_init_greedy())
            return chain
        if p.top_k > 0:
            L.llama_sampler_chain_add(chain, L.llama_sampler_init_top_k(p.top_k))
        if p.top_p < 1.0:
            L.llama_sampler_chain_add(chain, L.llama_sampler_init_top_p(p.top_p, 1))
        L.llama_sampler_chain_add(chain, L.llama_sampler_init_temp(p.temperature))
        seed = L.LLAMA_DEFAULT_SEED if p.seed is None else p.seed & 0xFFFFFFFF  # LLAMA_DEFAULT_SEED = random
        L.llama_sampler_chain_add(chain, L.llama_sampler_init_dist(seed))
        return chain

    def _remove(self, seq: Sequence, *, keep_cache: bool = False) -> None:
        """Take ``seq`` out of the batch and free its slot; its KV cache stays only if it is whole."""
        self._active.remove(seq)
        if not keep_cache:
            L.llama_memory_seq_rm(self._mem, seq.seq_id, -1, -1)
            seq.slot.tokens.clear()
        if seq.sampler is not None:
            L.llama_sampler_free(seq.sampler)
            seq.sampler = None
        self._free_slots.append(seq.slot)

    def _step(self) -> None:
        # Prompt budget first, oldest sequence first: every generating sequence needs its one token.
        budget = self.n_batch - sum(1 for seq in self._active if seq.next_token >= 0)
        take: dict[int, int] = {}
        for seq in self._active:
            if seq.next_token < 0 and budget > 0:
                take[seq.seq_id] = min(len(seq.prompt) - seq.pos, budget)
                budget -= take[seq.seq_id]
        # The batch lists sequences by increasing id: with one KV stream per sequence, llama.cpp puts
        # only consecutive ids into one ubatch, so this order keeps a step to as few ubatches as it can.
        batch = self._batch
        tok, pos, nseq, sid, logits = batch.token, batch.pos, batch.n_seq_id, batch.seq_id, batch.logits
        n = 0
        outputs: list[tuple[Sequence, int]] = []
        members = sorted((s for s in self._active if s.next_token >= 0 or s.seq_id in take), key=lambda s: s.seq_id)
        for seq in members:
            if seq.next_token >= 0:  # one token of a sequence that is generating
                tok[n], pos[n], nseq[n], logits[n] = seq.next_token, seq.pos, 1, 1
                sid[n][0] = seq.seq_id
                seq.slot.tokens.append(seq.next_token)
                outputs.append((seq, n))
                seq.pos += 1
                n += 1
                continue
            k = take[seq.seq_id]  # a chunk of a prompt
            for i in range(k):
                tok[n], pos[n], nseq[n], logits[n] = seq.prompt[seq.pos + i], seq.pos + i, 1, 0
                sid[n][0] = seq.seq_id
                n += 1
            seq.slot.tokens.extend(seq.prompt[seq.pos : seq.pos + k])
            seq.pos += k
            if seq.pos == len(seq.prompt):
                logits[n - 1] = 1
                outputs.append((seq, n - 1))
        batch.n_tokens = n
        rc = L.llama_decode(self._ctx, batch)
        if rc != 0:  # fail the sequences of this batch; the others keep going
            log.error("llama_decode failed with code %d on %d tokens", rc, n)
            for seq in members:
                seq.emit(EngineError(f"llama_decode failed with code {rc}"))
                self._remove(seq)
            return
        for seq, index in outputs:
            try:
                token = L.llama_sampler_sample(seq.sampler, self._ctx, index)
                self._on_token(seq, token)
            except Exception as exc:  # one sequence broke, not the engine
                self._fail(seq, exc)

    def _on_token(self, seq: Sequence, token: int) -> None:
        if L.llama_vocab_is_eog(self._vocab, token):
            self._finish(seq, "stop", Delta("", 0))
            return
        seq.generated += 1
        piece = self._pieces.get(token)
        if piece is None:
            piece = self._pieces[token] = self._piece(token)
        text, ended = seq.text.feed(piece)
        if ended:
            self._finish(seq, ended, Delta(text, 1), flush=False)
        elif seq.generated >= seq.params.max_tokens:
            self._finish(seq, "length", Delta(text, 1))
        else:
            seq.emit(Delta(text, 1))
            seq.next_token = token

    def _finish(self, seq: Sequence, reason: FinishReason, last: Delta, *, flush: bool = True) -> None:
        tail = seq.text.finish() if flush else ""
        if last.text or tail or last.tokens:
            seq.emit(Delta(last.text + tail, last.tokens))
        seq.emit(Finished(reason, len(seq.prompt), seq.generated, seq.cached))
        self._remove(seq, keep_cache=True)


def _quantisation(model: Any) -> str:
    """The weights' type as llama.cpp describes the model ("llama 135M Q4_1" -> "Q4_1")."""
    buf = ctypes.create_string_buffer(256)
    n = L.llama_model_desc(model, buf, len(buf))
    desc = buf.value.decode("utf-8", "replace") if n > 0 else ""
    return desc.rsplit(" ", 1)[-1] if desc else "unknown"
