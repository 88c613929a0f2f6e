"""docker/: each image installs only its service's extra (no torch where no model runs), runs as a
non-root user, checks readiness, builds from a context that holds what it copies, and installs a package
that carries every file of comps/ and megaservice/ (the gateway's migrations included)."""

from __future__ import annotations

import fnmatch
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from tests.support.deploy import REPO, SPECS, default_port

pytestmark = pytest.mark.unit

DOCKERFILES = {"cpu": REPO / "docker" / "Dockerfile", "cuda-llm": REPO / "docker" / "Dockerfile.llm-cuda"}
MODEL_RUNTIMES = {"torch", "sentence-transformers", "transformers", "llama-cpp-python"}


def extras() -> dict[str, list[str]]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]


def closure(extra: str) -> dict[str, str]:
    """Requirement name -> requirement of one extra of pyproject.toml, with chatqna[...] expanded."""
    found: dict[str, str] = {}
    for req in extras()[extra]:
        name = re.match(r"[A-Za-z0-9_.\-]+", req)[0].lower().replace("_", "-")
        if name == "chatqna":
            for inner in re.search(r"\[(.*)\]", req)[1].split(","):
                found.update(closure(inner.strip()))
        else:
            found[name] = req
    return found


def instructions(path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    lines = [line for line in path.read_text().splitlines() if not line.lstrip().startswith("#")]
    text = re.sub(r"\\\n", " ", "\n".join(lines))
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in text.splitlines() if line.strip()]


def stages(path) -> list[list[tuple[str, str]]]:
    out: list[list[tuple[str, str]]] = []
    for ins in instructions(path):
        if ins[0] == "FROM":
            out.append([])
        if out:
            out[-1].append(ins)
    return out


@pytest.mark.parametrize("name", list(SPECS))
def test_each_service_has_an_extra_and_only_model_services_pull_a_model_runtime(name: str) -> None:
    deps = set(closure(name))
    if name in ("embedding", "reranker"):
        assert closure(name)["torch"] == "torch==2.13.0"
        assert "llama-cpp-python" not in deps
    elif name == "llm":
        assert "llama-cpp-python" in deps and "torch" not in deps
    else:
        assert not deps & MODEL_RUNTIMES, f"the {name} image would carry {deps & MODEL_RUNTIMES}"


def test_gateway_image_carries_identity_and_nothing_heavier() -> None:
    deps = set(closure("gateway"))
    # accounts and keys in PostgreSQL (SQLAlchemy async, asyncpg, Alembic), argon2id, JWTs (RS/ES need crypto)
    assert {"sqlalchemy", "asyncpg", "alembic", "argon2-cffi", "pyjwt"} <= deps
    assert "crypto" in closure("gateway")["pyjwt"] and "asyncio" in closure("gateway")["sqlalchemy"]
    local = {re.match(r"[A-Za-z0-9_.\-]+", req)[0].lower() for req in extras()["local"]} - {"redis"}  # the client
    assert "redis" in deps and "numpy" not in deps  # the answer cache's client
    assert not deps & (MODEL_RUNTIMES | local), f"the gateway image would carry {deps & (MODEL_RUNTIMES | local)}"


def test_the_installed_package_carries_every_source_file(tmp_path: Path) -> None:
    """`pip install .` (what the images run) ships each file under comps/ and megaservice/: the migrations
    folders have no __init__.py and non-Python files (alembic's script template) need package data; a C source is
    shipped compiled (the OTLP encoder, comps/core/_otlp.c)."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.so")  # a checkout's own build left out
    for name in ("comps", "megaservice"):
        shutil.copytree(REPO / name, src / name, ignore=ignore)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "-q",
            "-w",
            str(tmp_path / "dist"),
            str(src),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (wheel,) = (tmp_path / "dist").glob("chatqna-*.whl")
    shipped = set(zipfile.ZipFile(wheel).namelist())
    sources = {
        path.relative_to(src).as_posix()
        for name in ("comps", "megaservice")
        for path in (src / name).rglob("*")
        if path.is_file() and path.suffix != ".c"
    }
    assert sources - shipped == set(), "missing from the installed package (add them to package data)"
    assert any(re.fullmatch(r"comps/core/_otlp\..*\.so", name) for name in shipped), "the encoder is not compiled"


@pytest.mark.parametrize("kind", list(DOCKERFILES))
def test_images_install_one_extra_and_run_as_non_root_with_a_readiness_healthcheck(kind: str) -> None:
    build, runtime = stages(DOCKERFILES[kind])
    runs = " ".join(args for ins, args in build if ins == "RUN")
    assert "pip install" in runs and '".[${SERVICE}]"' in runs, "installs exactly one extra"
    env = " ".join(args for ins, args in runtime if ins == "ENV")
    assert "CHATQNA_READY_URL=http://127.0.0.1:${PORT}${READY_PATH}" in env
    assert ("ARG", "READY_PATH=/v1/ready") in runtime  # the chat UI's build sets Streamlit's /_stcore/health
    assert "CHATQNA_MODULE=${MODULE}" in env and "CHATQNA_MODELS_DIR=/models" in env
    assert [args for ins, args in runtime if ins == "USER"] == ["10001:10001"]
    health = [args for ins, args in runtime if ins == "HEALTHCHECK"]
    assert len(health) == 1 and "os.environ['CHATQNA_READY_URL']" in health[0]
    assert runtime[-1] == ("CMD", '["/bin/sh", "-c", "exec python -m \\"$CHATQNA_MODULE\\""]')
    assert not any(ins == "RUN" and ("apt-get install" in args and "cmake" in args) for ins, args in runtime), (
        "compilers belong in the build stage"
    )


def test_cpu_image_pins_torch_to_the_cpu_build_by_default() -> None:
    text = DOCKERFILES["cpu"].read_text()
    assert "ARG TORCH_VARIANT=cpu" in text
    assert 'echo "torch==2.13.0+${TORCH_VARIANT}" > /tmp/constraints.txt' in text
    assert "https://download.pytorch.org/whl/${TORCH_VARIANT}" in text
    assert "HF_HUB_OFFLINE=1" in text  # no model hub at run time: models come from /models


def test_cuda_llm_image_builds_llama_cpp_with_cuda_on_a_cuda_base() -> None:
    build, runtime = stages(DOCKERFILES["cuda-llm"])
    assert build[0][1].startswith("nvidia/cuda:${CUDA_VERSION}-devel-")
    assert runtime[0][1].startswith("nvidia/cuda:${CUDA_VERSION}-runtime-")
    runs = " ".join(args for ins, args in build if ins == "RUN")
    assert "-DGGML_CUDA=on" in runs and "-DGGML_NATIVE=OFF" in runs
    assert ("ARG", "SERVICE=llm") in build and ("ARG", "MODULE=comps.llm") in runtime
    assert ("ARG", f"PORT={default_port(SPECS['llm'])}") in runtime


def test_build_context_holds_what_the_images_copy_and_nothing_else() -> None:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.startswith("#")]

    def sent(path: str) -> bool:  # .dockerignore semantics: the last matching pattern wins
        keep = True
        for pattern in patterns:
            negate = pattern.startswith("!")
            pat = pattern.lstrip("!").rstrip("/")
            if fnmatch.fnmatch(path, pat) or path.startswith(pat + "/"):
                keep = negate
        return keep

    for dockerfile in DOCKERFILES.values():
        for ins, args in instructions(dockerfile):
            if ins == "COPY" and "--from" not in args:
                for source in args.split()[:-1]:
                    assert (REPO / source).exists(), f"{dockerfile.name} copies {source}, which does not exist"
                    assert sent(source), f"{source} is excluded by .dockerignore"
    for heavy in (".venv", "models", ".git", "tests", ".state"):
        assert not sent(heavy), f"{heavy} would be sent to the Docker daemon"
