"""``python -m comps.prompt_registry``: the prompt registry (port 6018)."""

from comps.core.backends import run_service
from comps.prompt_registry.router import build_app
from comps.prompt_registry.settings import PromptRegistrySettings

if __name__ == "__main__":
    run_service(PromptRegistrySettings, build_app)
