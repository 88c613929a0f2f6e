"""`python -m ui`: the Streamlit server of the chat UI, on UI_HOST:UI_PORT, talking to UI_GATEWAY_URL."""

from __future__ import annotations

import sys
from pathlib import Path

from comps.core.settings import load_settings
from ui.settings import UISettings

HERE = Path(__file__).resolve().parent


def command(settings: UISettings) -> list[str]:
    """The `streamlit run` arguments; the theme (light and dark) is in ui/.streamlit/config.toml."""
    return [
        "streamlit",
        "run",
        str(HERE / "app.py"),
        f"--server.address={settings.host}",
        f"--server.port={settings.port}",
        "--server.headless=true",
        "--server.runOnSave=false",
        "--server.fileWatcherType=none",
        "--browser.gatherUsageStats=false",
        "--global.developmentMode=false",
    ]


def main() -> None:
    import os

    settings = load_settings(UISettings)  # fails at start naming a bad variable
    from streamlit.web import cli

    os.chdir(HERE)  # Streamlit reads .streamlit/config.toml from the working directory
    sys.argv = command(settings)
    sys.exit(cli.main())


if __name__ == "__main__":
    main()
