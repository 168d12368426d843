"""Prefect settings for offline use, applied before `prefect` is first imported.

Prefect reads `DO_NOT_TRACK` and sets up its SDK analytics at import time, so the
flags must be in the environment before the first `import prefect`. Every flows module
that imports Prefect calls `apply()` first. Values the user already set win (`setdefault`),
and a `PREFECT_API_URL` in the environment is left alone so runs go to that server instead
of an ephemeral one (a flow called from Python without one). `configured_api_url` tells the
terminal's batch whether it runs as a flow on a server or in its own process.
"""

from __future__ import annotations

import os
import sys
import tomllib
from pathlib import Path

# Telemetry off, and a cold ephemeral-server start (near Prefect's 20 s default on a small
# machine) must not time out.
OFFLINE_DEFAULTS: dict[str, str] = {
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
    # The UI is not needed by an in-process (ephemeral) server and costs start-up time.
    "PREFECT_SERVER_UI_ENABLED": "false",
}


def configured_api_url() -> str | None:
    """The Prefect API a run is configured to use: `PREFECT_API_URL` in the environment,
    else in the active profile of Prefect's profiles file (`PREFECT_PROFILES_PATH`, else
    `PREFECT_HOME`/profiles.toml, else ~/.prefect/profiles.toml; `PREFECT_PROFILE` names the
    profile, else the file's `active`). Read without importing Prefect, whose import costs
    a terminal batch seconds it does not need when there is no server to talk to."""
    url = os.environ.get("PREFECT_API_URL")
    if url is not None:
        return url or None
    home = Path(os.environ.get("PREFECT_HOME", "~/.prefect")).expanduser()
    path = Path(os.environ.get("PREFECT_PROFILES_PATH", home / "profiles.toml")).expanduser()
    try:
        profiles = tomllib.loads(path.read_text())
    except (OSError, ValueError):
        return None  # none, or not readable: Prefect itself would not find a server there
    name = os.environ.get("PREFECT_PROFILE") or profiles.get("active")
    profile = profiles.get("profiles", {}).get(name, {})
    url = profile.get("PREFECT_API_URL") if isinstance(profile, dict) else None
    return str(url) if url else None


def apply() -> dict[str, str]:
    """Put the offline defaults into `os.environ` unless already set; return what was set.

    Warns on stderr if Prefect was imported before this ran (its analytics flag was then
    read too late for this process).
    """
    applied: dict[str, str] = {}
    for key, value in OFFLINE_DEFAULTS.items():
        if key not in os.environ:
            os.environ[key] = value
            applied[key] = value
    if "DO_NOT_TRACK" in applied and "prefect" in sys.modules:
        print(
            "warning: prefect was imported before flows.prefect_env.apply(); "
            "set DO_NOT_TRACK=1 in the environment to keep telemetry off",
            file=sys.stderr,
        )
    return applied


apply()
