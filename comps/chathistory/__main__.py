"""``python -m comps.chathistory``: the chathistory service (port 6012)."""

from comps.chathistory.router import build_app
from comps.chathistory.settings import ChatHistorySettings
from comps.core.backends import run_service

if __name__ == "__main__":
    run_service(ChatHistorySettings, build_app)
