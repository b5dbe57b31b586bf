"""Upload WaFL's Prometheus datasource and dashboards to a running Grafana (grafana-client).

``wafl grafana push --url URL`` calls :func:`push` with the token from ``GRAFANA_TOKEN`` (a
service-account token with the Editor role, or Admin to create the datasource). Everything is an
upsert, so pushing again updates in place:

- the datasource ``wafl-prometheus`` (type prometheus) pointing at ``prometheus_url``;
- the folder ``WaFL`` (uid ``wafl``);
- every dashboard of deploy/grafana/dashboards/*.json into that folder, overwriting older versions.

The token is sent as a bearer header only and never printed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from grafana_client.api import GrafanaApi
from grafana_client.client import GrafanaClientError

from wafl.core.paths import PROJECT_ROOT

DASHBOARD_DIR = PROJECT_ROOT / "deploy" / "grafana" / "dashboards"
DATASOURCE_UID = "wafl-prometheus"
FOLDER_UID = "wafl"
FOLDER_TITLE = "WaFL"
DEFAULT_PROMETHEUS_URL = "http://prometheus:9090"


def datasource_payload(prometheus_url: str) -> dict[str, Any]:
    return {
        "uid": DATASOURCE_UID,
        "name": "WaFL Prometheus",
        "type": "prometheus",
        "access": "proxy",
        "url": prometheus_url,
        "isDefault": False,
        "jsonData": {"httpMethod": "POST", "timeInterval": "10s"},
    }


def _not_found(exc: GrafanaClientError) -> bool:
    return getattr(exc, "status_code", None) == 404


def push(
    url: str,
    token: str,
    *,
    prometheus_url: str | None = None,
    dashboard_dir: Path = DASHBOARD_DIR,
    echo: Callable[[str], None] | None = None,
) -> None:
    """Upsert the datasource, the folder and every dashboard at the Grafana at ``url``.

    ``prometheus_url`` is the URL Grafana's server uses to reach Prometheus (default:
    ``$WAFL_PROMETHEUS_URL``, else ``http://prometheus:9090``, the docker-compose name).
    Raises ``ValueError`` for an empty token or no dashboards, and grafana-client's errors
    (``GrafanaUnauthorizedError``, ``GrafanaClientError``...) when Grafana refuses.
    """
    if not token:
        raise ValueError("no Grafana token: set GRAFANA_TOKEN to a service-account token")
    files = sorted(dashboard_dir.glob("*.json"))
    if not files:
        raise ValueError(f"no dashboards in {dashboard_dir}: run deploy/grafana/dashboards.py")
    say = echo or (lambda line: None)
    api = GrafanaApi.from_url(url, credential=token)

    source = datasource_payload(prometheus_url or os.environ.get("WAFL_PROMETHEUS_URL") or DEFAULT_PROMETHEUS_URL)
    try:
        api.datasource.get_datasource_by_uid(DATASOURCE_UID)
    except GrafanaClientError as exc:
        if not _not_found(exc):
            raise
        api.datasource.create_datasource(source)
        say(f"datasource {DATASOURCE_UID}: created ({source['url']})")
    else:
        api.datasource.update_datasource_by_uid(DATASOURCE_UID, source)
        say(f"datasource {DATASOURCE_UID}: updated ({source['url']})")

    try:
        api.folder.get_folder(FOLDER_UID)
    except GrafanaClientError as exc:
        if not _not_found(exc):
            raise
        api.folder.create_folder(FOLDER_TITLE, uid=FOLDER_UID)
        say(f"folder {FOLDER_TITLE}: created")

    for path in files:
        board = json.loads(path.read_text())
        board.pop("id", None)  # Grafana matches by uid; a foreign numeric id would conflict
        api.dashboard.update_dashboard({
            "dashboard": board,
            "folderUid": FOLDER_UID,
            "overwrite": True,
            "message": "wafl grafana push",
        })
        say(f"dashboard {board['uid']}: pushed ({path.name})")
