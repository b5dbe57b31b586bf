"""Every panel's PromQL expression of the generated dashboards (deploy/grafana/dashboards/*.json),
for checks against a real Prometheus. Reads the committed JSON (what Grafana is provisioned with),
not the code, and needs nothing but the standard library.

    from wafl_grafana.queries import panel_queries
    for q in panel_queries():                 # template variables expanded for a query API
        result = prometheus_query(q.expr)     # /api/v1/query?query=...
        assert result, f"{q.dashboard} / {q.panel}: no data for {q.expr}"

``panel_queries(expand=False)`` keeps Grafana's variables (``$org``, ``$__rate_interval``...).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DASHBOARD_DIR = Path(__file__).resolve().parent / "dashboards"

# Values for Grafana's variables when a query goes straight to Prometheus: every organisation and
# service (the dashboards' "All" is ".+"), and intervals that suit a short run scraped every 10 s.
DEFAULT_VARIABLES: Mapping[str, str] = {
    "org": ".+",
    "component": ".+",
    "datasource": "prometheus",
    "__rate_interval": "1m",
    "__interval": "30s",
    "__range": "15m",
}

_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)(?::\w+)?\]\]")


@dataclass(frozen=True)
class PanelQuery:
    dashboard: str  # dashboard uid
    dashboard_title: str
    panel: str  # panel title
    panel_id: int | None
    ref_id: str
    expr: str
    instant: bool
    legend: str | None


def expand(expr: str, variables: Mapping[str, str] = DEFAULT_VARIABLES) -> str:
    """``expr`` with Grafana's template variables replaced; KeyError names an unknown variable
    (so a new variable cannot slip past the checks unexpanded)."""

    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2) or match.group(3)
        if name.isdigit():  # "$1" in a label_replace replacement is PromQL, not a variable
            return match.group(0)
        if name not in variables:
            raise KeyError(f"no value for the Grafana variable ${name} in {expr!r}")
        return variables[name]

    return _VARIABLE.sub(value, expr)


def load_dashboards(directory: Path = DASHBOARD_DIR) -> list[dict[str, Any]]:
    return [json.loads(path.read_text()) for path in sorted(directory.glob("*.json"))]


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels") or [])  # collapsed rows hold their panels


def panel_queries(
    dashboards: list[dict[str, Any]] | None = None,
    *,
    expand_variables: bool = True,
    variables: Mapping[str, str] = DEFAULT_VARIABLES,
) -> list[PanelQuery]:
    """One entry per Prometheus target of every panel of every dashboard (rows skipped)."""
    out: list[PanelQuery] = []
    for board in dashboards if dashboards is not None else load_dashboards():
        for panel in _panels(board.get("panels") or []):
            for target in panel.get("targets") or []:
                expr = target.get("expr")
                if not expr or target.get("hide"):
                    continue
                out.append(PanelQuery(
                    dashboard=board["uid"],
                    dashboard_title=board.get("title", board["uid"]),
                    panel=panel.get("title", ""),
                    panel_id=panel.get("id"),
                    ref_id=target.get("refId", ""),
                    expr=expand(expr, variables) if expand_variables else expr,
                    instant=bool(target.get("instant")) and not target.get("range", False),
                    legend=target.get("legendFormat"),
                ))
    return out


def variable_queries(dashboards: list[dict[str, Any]] | None = None,
                     variables: Mapping[str, str] = DEFAULT_VARIABLES) -> dict[str, str]:
    """The PromQL of each query variable (``label_values(...)``), by dashboard uid and name."""
    out = {}
    for board in dashboards if dashboards is not None else load_dashboards():
        for variable in (board.get("templating") or {}).get("list", []):
            if variable.get("type") != "query":
                continue
            query = variable.get("query")
            text = query.get("query") if isinstance(query, dict) else query
            if text:
                out[f"{board['uid']}/{variable['name']}"] = expand(text, variables)
    return out


if __name__ == "__main__":
    for q in panel_queries():
        print(f"{q.dashboard}\t{q.panel}\t{q.ref_id}\t{q.expr}")
