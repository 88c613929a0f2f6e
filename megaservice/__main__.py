"""``python -m megaservice``: the ChatQnA gateway on port 8888 (settings: GATEWAY_*)."""

from __future__ import annotations

from comps.core.backends import run_service
from megaservice.router import build_app
from megaservice.settings import GatewaySettings

if __name__ == "__main__":
    run_service(GatewaySettings, build_app)
