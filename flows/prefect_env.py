"""Prefect settings for offline use, applied before `prefect` is first imported.

Prefect reads `DO_NOT_TRACK` and sets up its SDK analytics at import time, so the
flags must be in the environment before the first `import prefect`. Every flows module
calls `apply()` first. Values the user already set win (`setdefault`), and a
`PREFECT_API_URL` in the environment is left alone so runs go to that server instead of
the ephemeral one.
"""

from __future__ import annotations

import os
import sys

# Telemetry off, and a cold ephemeral-server start (near Prefect's 20 s default on a small
# machine) must not time out.
OFFLINE_DEFAULTS: dict[str, str] = {
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
    # The UI is not needed by an in-process (ephemeral) server and costs start-up time.
    "PREFECT_SERVER_UI_ENABLED": "false",
}


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
