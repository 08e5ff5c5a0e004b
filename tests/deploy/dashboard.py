"""Evaluate every PromQL query of the Grafana dashboard against a running Prometheus, as Grafana would
(``$__rate_interval`` → ``1m``, ``$instance`` → ``.*``), and report how many series each returns; the
template variables' ``label_values(metric, label)`` queries are asked of the label values API.

    python -m tests.deploy.dashboard --prometheus http://127.0.0.1:9090 [--dashboard FILE]

Exits 1 when a query fails or returns no series. Used by ``tests/deploy/test_stack.py`` (marker ``docker``)
against the compose stack's Prometheus; what it cannot check (Grafana's rendering, panel options) is listed in
``deploy/README.md``.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import httpx

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "dashboards" / "realmqa.json"
# Grafana's variables as this check sets them: $__rate_interval at least 4 scrape intervals (5 s) → 1m, as
# Grafana computes it for short ranges with the datasource's timeInterval of 5s; every instance.
VARIABLES = {"$__rate_interval": "1m", "${__rate_interval}": "1m", "$instance": ".*", "${instance}": ".*"}


@dataclass(frozen=True)
class PanelQuery:
    panel: str
    ref: str
    expr: str


@dataclass(frozen=True)
class QueryResult:
    query: PanelQuery
    series: int
    error: str | None


def panel_queries(dashboard: dict) -> list[PanelQuery]:
    """Every target expression of every panel (rows' nested panels included), in dashboard order.

    Raises:
        ValueError: a panel has no target with an ``expr``.
    """
    out: list[PanelQuery] = []
    panels = list(dashboard.get("panels", []))
    while panels:
        p = panels.pop(0)
        if p.get("type") == "row":
            panels[:0] = p.get("panels", [])
            continue
        exprs = [t for t in p.get("targets", []) if t.get("expr")]
        if not exprs:
            raise ValueError(f"panel {p.get('title')!r} has no PromQL target")
        out += [PanelQuery(p.get("title", "?"), t.get("refId", "?"), t["expr"]) for t in exprs]
    return out


def variable_queries(dashboard: dict) -> list[PanelQuery]:
    """The template variables' ``label_values(metric, label)`` queries, as ``PanelQuery("$name", label, metric)``.

    Raises:
        ValueError: a query variable's query is not ``label_values(metric, label)``.
    """
    out = []
    for v in dashboard.get("templating", {}).get("list", []):
        if v.get("type") != "query":
            continue
        q = v["query"] if isinstance(v["query"], str) else v["query"].get("query", "")
        m = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", q.strip())
        if not m:
            raise ValueError(f"variable {v['name']!r}: cannot check query {q!r}")
        out.append(PanelQuery("$" + v["name"], m.group(2), m.group(1)))
    return out


def substitute(expr: str) -> str:
    for name, value in sorted(VARIABLES.items(), key=lambda kv: -len(kv[0])):
        expr = expr.replace(name, value)
    if "$" in expr:
        raise ValueError(f"unknown dashboard variable left in {expr!r}")
    return expr


def evaluate(prometheus_url: str, dashboard: dict, timeout_s: float = 10.0) -> list[QueryResult]:
    """Run each panel query as an instant query (``/api/v1/query``) and count the series it returns."""
    results = []
    with httpx.Client(base_url=prometheus_url, timeout=timeout_s) as client:
        for q in panel_queries(dashboard):
            r = client.get("/api/v1/query", params={"query": substitute(q.expr)})
            body = r.json()
            if r.status_code != 200 or body.get("status") != "success":
                results.append(QueryResult(q, 0, body.get("error", f"HTTP {r.status_code}")))
                continue
            results.append(QueryResult(q, len(body["data"]["result"]), None))
        for q in variable_queries(dashboard):
            r = client.get(f"/api/v1/label/{q.ref}/values", params={"match[]": q.expr})
            body = r.json()
            ok = r.status_code == 200 and body.get("status") == "success"
            results.append(QueryResult(q, len(body["data"]) if ok else 0, None if ok else f"HTTP {r.status_code}"))
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prometheus", required=True, help="Prometheus base URL, e.g. http://127.0.0.1:9090")
    ap.add_argument("--dashboard", default=str(DASHBOARD))
    a = ap.parse_args(argv)
    results = evaluate(a.prometheus, json.loads(Path(a.dashboard).read_text()))
    for r in results:
        state = f"error: {r.error}" if r.error else f"{r.series} series"
        print(f"{r.query.panel} [{r.query.ref}]: {state}")
    bad = [r for r in results if r.error or r.series == 0]
    print(f"{len(results) - len(bad)} of {len(results)} queries returned data")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
