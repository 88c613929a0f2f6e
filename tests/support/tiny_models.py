"""Models the tests build themselves, since no registry ships them (see the environment notes)."""

from __future__ import annotations

import shutil
from pathlib import Path

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")


def build_tiny_cross_encoder(models_dir: Path, folder: Path) -> Path:
    """A 2-layer BertForSequenceClassification (one label) with MiniLM's tokenizer, saved to ``folder``:
    sentence-transformers loads it offline as a CrossEncoder. Deterministic (seed 0)."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    folder.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        shutil.copy(models_dir / "all-MiniLM-L6-v2" / name, folder / name)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
        num_labels=1,
        initializer_range=0.5,
    )
    torch.manual_seed(0)
    BertForSequenceClassification(config).save_pretrained(folder)
    return folder
