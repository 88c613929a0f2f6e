"""``python -m comps.dataprep``: the dataprep service (port 6007)."""

from comps.core.backends import run_service
from comps.dataprep.router import build_app
from comps.dataprep.settings import DataprepSettings

if __name__ == "__main__":
    run_service(DataprepSettings, build_app)
