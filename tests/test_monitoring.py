"""deploy/monitoring/: the ServiceMonitor, the alerts and the Grafana dashboard, checked against
the control plane's Service and the metrics it exports."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from support.kustomize import kustomize
from support.promql import PromQLError, exported, metric_names

from xds_server.operations.health import METRICS_PATH

ROOT = Path(__file__).resolve().parents[1]
MONITORING = ROOT / "deploy" / "monitoring"
RELEASE = ROOT / "deploy" / "release" / "monitoring.yaml"
PROMETHEUS_OWN = {"up"}  # series Prometheus makes for every target
# What a dashboard's Grafana variables stand for, to read its queries as PromQL.
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$job": "staticsite-xds"}

Object = dict[str, Any]


def unknown_metrics(expr: str) -> set[str]:
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    return metric_names(expr) - exported() - PROMETHEUS_OWN


def documents(name: str) -> list[Object]:
    return [doc for doc in yaml.safe_load_all((MONITORING / name).read_text()) if doc is not None]


def rules() -> list[Object]:
    (rule,) = documents("prometheus-rule.yaml")
    assert (rule["apiVersion"], rule["kind"]) == ("monitoring.coreos.com/v1", "PrometheusRule")
    return [r for group in rule["spec"]["groups"] for r in group["rules"]]


def dashboard() -> Object:
    data: Object = json.loads((MONITORING / "dashboard.json").read_text())
    return data


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, expression) of every query the dashboard runs, its variables' included."""
    queries = [(p["title"], t["expr"]) for p in dashboard()["panels"] for t in p["targets"]]
    for variable in dashboard()["templating"]["list"]:
        if variable["type"] == "query":
            match = re.fullmatch(r"label_values\((\w+), *\w+\)", variable["query"]["query"])
            assert match, variable
            queries.append((f"${variable['name']}", match.group(1)))
    return queries


# -- the checker itself -----------------------------------------------------------------------------


@pytest.mark.unit
def test_the_checker_finds_the_series_an_expression_reads() -> None:
    expr = 'sum by (type, le) (rate(a_total{type!="x", le=~"1|2"}[5m])) / on (type) group_left b - time() < 3 * 86400'
    assert metric_names(expr) == {"a_total", "b"}
    assert metric_names("absent(up{job='x'} == 1)") == {"up"}
    assert metric_names("histogram_quantile(0.99, sum by (le) (rate(h_bucket[1h30m])))") == {"h_bucket"}


@pytest.mark.unit
@pytest.mark.parametrize(
    ("expr", "says"),
    [
        ("sum(rate(a_total[5m])", "never closed"),
        ("rate(a_total[5m]))", "closes nothing"),
        ("rate(a_total[5m)]", "closes nothing"),
        ("rates(a_total[5m])", "no PromQL function is named 'rates'"),
        ('a{job="x}', "does not end"),
        ("a # b", "unexpected"),
    ],
)
def test_the_checker_refuses_a_bad_expression(expr: str, says: str) -> None:
    with pytest.raises(PromQLError, match=says):
        metric_names(expr)


@pytest.mark.unit
def test_a_metric_the_control_plane_does_not_export_is_found() -> None:
    assert unknown_metrics("increase(staticsite_xds_nack_total[10m]) > 0") == {"staticsite_xds_nack_total"}
    assert unknown_metrics("staticsite_xds_sites_total") == {"staticsite_xds_sites_total"}
    assert unknown_metrics("rate(staticsite_xds_nacks_total[$__rate_interval])") == set()


# -- the alerts -------------------------------------------------------------------------------------


@pytest.mark.unit
@pytest.mark.parametrize("rule", rules(), ids=lambda r: r["alert"])
def test_every_alert_reads_only_exported_metrics(rule: Object) -> None:
    assert unknown_metrics(rule["expr"]) == set()


@pytest.mark.unit
def test_every_alert_is_named_once_with_a_severity_and_words_for_the_operator() -> None:
    names = [r["alert"] for r in rules()]
    assert len(names) == len(set(names))
    for rule in rules():
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert set(rule["annotations"]) == {"summary", "description"}, rule["alert"]
        assert all(rule["annotations"].values()), rule["alert"]
        assert re.fullmatch(r"\d+[smh]", rule.get("for", "0m")), rule["alert"]
        for text in rule["annotations"].values():  # Prometheus templates: every {{ closes
            assert text.count("{{") == text.count("}}"), rule["alert"]


@pytest.mark.unit
def test_the_alerts_cover_what_an_operator_must_hear_of() -> None:
    by_metric: dict[str, list[Object]] = {}
    for rule in rules():
        for name in metric_names(rule["expr"]):
            by_metric.setdefault(name, []).append(rule)
    for name in (
        "up",
        "staticsite_xds_nacks_total",
        "staticsite_xds_source_up",
        "staticsite_xds_envoys_behind",
        "staticsite_xds_streams_refused_total",
    ):
        assert name in by_metric, f"no alert reads {name}"
    expiry = by_metric["staticsite_xds_certificate_expiry_timestamp_seconds"]
    assert {
        (r["labels"]["severity"], re.search(r"< (\d+) \* 86400", r["expr"]).group(1)) for r in expiry
    } == {  # type: ignore[union-attr]
        ("warning", "14"),
        ("critical", "3"),
    }


# -- the dashboard ----------------------------------------------------------------------------------


@pytest.mark.unit
@pytest.mark.parametrize("query", dashboard_queries(), ids=lambda q: q[0])
def test_every_dashboard_query_reads_only_exported_metrics(query: tuple[str, str]) -> None:
    assert unknown_metrics(query[1]) == set()


@pytest.mark.unit
def test_the_dashboard_has_panels_grafana_can_place() -> None:
    board = dashboard()
    assert board["uid"]
    assert board["title"]
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    taken: set[tuple[int, int]] = set()
    for panel in board["panels"]:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        cells = {
            (x, y)
            for x in range(grid["x"], grid["x"] + grid["w"])
            for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not cells & taken, f"{panel['title']} overlaps another panel"
        taken |= cells
    assert {v["name"] for v in board["templating"]["list"]} == {"datasource", "job"}


# -- the kustomization ------------------------------------------------------------------------------


@pytest.mark.unit
def test_the_dashboard_is_a_config_map_grafana_finds() -> None:
    kustomization = yaml.safe_load((MONITORING / "kustomization.yaml").read_text())
    assert kustomization["namespace"] == "staticsite-xds"
    for resource in kustomization["resources"]:
        assert (MONITORING / resource).is_file(), resource
    listed = {*kustomization["resources"], "kustomization.yaml"}
    assert {p.name for p in MONITORING.glob("*.yaml")} == listed
    (generator,) = kustomization["configMapGenerator"]
    assert generator["options"]["labels"] == {"grafana_dashboard": "1"}
    (source,) = generator["files"]
    key, _, path = source.partition("=")
    assert key.endswith(".json")
    assert (MONITORING / path) == MONITORING / "dashboard.json"


@pytest.mark.unit
def test_the_service_monitor_scrapes_the_control_plane_metrics_port() -> None:
    (monitor,) = documents("service-monitor.yaml")
    assert (monitor["apiVersion"], monitor["kind"]) == ("monitoring.coreos.com/v1", "ServiceMonitor")
    services = [
        d
        for d in yaml.safe_load_all((ROOT / "deploy" / "control-plane.yaml").read_text())
        if d and d["kind"] == "Service"
    ]
    (service,) = [
        s
        for s in services
        if monitor["spec"]["selector"]["matchLabels"].items() <= s["metadata"]["labels"].items()
    ]
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert endpoint["path"] == METRICS_PATH
    # The alerts' `up{job=...}` is the job the ServiceMonitor gives its targets: the Service's name.
    assert all('job="staticsite-xds"' in r["expr"] for r in rules() if "up" in metric_names(r["expr"]))
    assert service["metadata"]["name"] == "staticsite-xds"


@pytest.mark.envoy  # renders with kubectl
def test_the_release_file_is_the_monitoring_folder_rendered() -> None:
    release = [doc for doc in yaml.safe_load_all(RELEASE.read_text()) if doc is not None]
    assert {(o["kind"], o["metadata"]["name"]) for o in release} == {
        ("ConfigMap", "staticsite-xds-dashboard"),
        ("ServiceMonitor", "staticsite-xds"),
        ("PrometheusRule", "staticsite-xds"),
    }
    for obj in release:
        assert obj["metadata"]["namespace"] == "staticsite-xds"
    (config_map,) = [o for o in release if o["kind"] == "ConfigMap"]
    assert json.loads(config_map["data"]["staticsite-xds.json"]) == dashboard()
    assert release == kustomize(MONITORING), "deploy/monitoring/ changed: run ./dev release"
