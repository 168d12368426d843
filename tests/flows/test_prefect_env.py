"""Offline Prefect settings are in place before Prefect is imported; user settings win."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PROBE = """
import json, os
import wsi_segment.flows.prefect_env
from prefect.settings import get_current_settings
s = get_current_settings()
print(json.dumps({
    "DO_NOT_TRACK": os.environ.get("DO_NOT_TRACK"),
    "analytics": s.server.analytics_enabled,
    "timeout": s.server.ephemeral.startup_timeout_seconds,
    "api_url": s.api.url,
}))
"""


def _probe(env: dict[str, str]) -> dict:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    clean.pop("DO_NOT_TRACK", None)
    out = subprocess.run(
        [sys.executable, "-c", PROBE],
        env={**clean, **env, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_offline_defaults_and_user_api_url_respected() -> None:
    seen = _probe({"PREFECT_API_URL": "http://prefect.example:4200/api"})
    assert seen == {
        "DO_NOT_TRACK": "1",
        "analytics": False,
        "timeout": 90,
        "api_url": "http://prefect.example:4200/api",
    }


def test_values_already_set_are_kept() -> None:
    seen = _probe({"PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "45"})
    assert seen["timeout"] == 45 and seen["api_url"] is None
