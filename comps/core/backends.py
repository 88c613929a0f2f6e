"""Backends are registered by short name and imported lazily, so an image carries only what it runs."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from fastapi import FastAPI

from comps.core.errors import ConfigError
from comps.core.settings import ServiceSettings, load_settings

S = TypeVar("S", bound=ServiceSettings)


def load_backend(kind: str, registry: Mapping[str, str], name: str, setting: str) -> type[Any]:
    """Import the backend class registered as ``name`` (``"module:Class"``); unknown names list the valid ones."""
    target = registry.get(name)
    if target is None:
        raise ConfigError(f"{setting}={name!r} is not a known {kind} backend; valid: {', '.join(sorted(registry))}")
    module, _, attr = target.partition(":")
    try:
        cls: type[Any] = getattr(importlib.import_module(module), attr)
        return cls
    except ImportError as exc:
        raise ConfigError(
            f"{setting}={name!r}: the {kind} backend needs a package that is not installed ({exc.name}); "
            f"install the service's extra, e.g. pip install 'chatqna[{kind}]'"
        ) from exc


def run_service(settings_cls: type[S], build_app: Callable[[S], FastAPI]) -> None:
    """Entry point of every ``python -m comps.<service>``: read settings once, build, serve."""
    from comps.core.app import serve

    try:
        settings = load_settings(settings_cls)
        app = build_app(settings)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    serve(app, settings)
