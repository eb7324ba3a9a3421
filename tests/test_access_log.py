"""The gateways' access log: one JSON line per request, where the operator says."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from envoy.extensions.access_loggers.file.v3 import file_pb2
from envoy.extensions.access_loggers.stream.v3 import stream_pb2
from google.protobuf import json_format
from support.manifests import manifest
from support.processes import Gateway, run_cli, running_gateway, try_get
from support.waiting import wait_until

from snapshot.builder import BuildOptions, SnapshotBuilder
from snapshot.model import Backend, SiteKey, StaticSite
from snapshot.resources import ACCESS_LOG_FIELDS, LISTENER_TYPE
from xds_server.local.sample_backend import SampleBackend

pytestmark = pytest.mark.envoy

Backends = Callable[[str], SampleBackend]
SITE = StaticSite(SiteKey("docs", "main"), "docs.example.test", Backend("docs", "web", 80))


def json_lines(text: str) -> list[dict[str, Any]]:
    """The access log lines among Envoy's output: whole JSON objects."""
    found = []
    for line in text.splitlines():
        if line.startswith("{"):
            try:
                found.append(json.loads(line))
            except ValueError:
                continue
    return found


def line_for(lines: list[dict[str, Any]], path: str) -> dict[str, Any] | None:
    return next((entry for entry in lines if entry.get("path") == path), None)


def manager_of(options: BuildOptions) -> Any:
    snapshot = SnapshotBuilder(options).build([SITE]).snapshot
    (listener,) = snapshot.of_type(LISTENER_TYPE).resources.values()
    from envoy.config.listener.v3 import listener_pb2
    from envoy.extensions.filters.network.http_connection_manager.v3 import (
        http_connection_manager_pb2 as hcm_pb2,
    )

    decoded = listener_pb2.Listener.FromString(listener.body)
    manager = hcm_pb2.HttpConnectionManager()
    decoded.filter_chains[0].filters[0].typed_config.Unpack(manager)
    return manager


@pytest.mark.parametrize(
    ("where", "logger", "sink_class"),
    [
        ("stdout", "envoy.access_loggers.stdout", stream_pb2.StdoutAccessLog),
        ("stderr", "envoy.access_loggers.stderr", stream_pb2.StderrAccessLog),
        ("/var/log/gateway/access.json", "envoy.access_loggers.file", file_pb2.FileAccessLog),
    ],
)
def test_every_destination_gets_the_json_line(where: str, logger: str, sink_class: Any) -> None:
    manager = manager_of(BuildOptions(access_log=where))
    (log,) = manager.access_log
    assert log.name == logger
    sink = sink_class()
    assert log.typed_config.Unpack(sink)
    assert json_format.MessageToDict(sink.log_format.json_format) == ACCESS_LOG_FIELDS
    if sink_class is file_pb2.FileAccessLog:
        assert sink.path == where


def test_off_means_no_access_log() -> None:
    assert list(manager_of(BuildOptions(access_log="off")).access_log) == []


@pytest.mark.parametrize("where", ["relative/path.json", "", "/tmp/a\nb"])
def test_a_bad_destination_is_a_clear_error(where: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="access log must be stdout, stderr, off or an absolute path"):
        BuildOptions(access_log=where)
    proc = run_cli("render", tmp_path, "--access-log", where)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "access log must be" in proc.stderr


def test_the_default_is_a_json_line_per_request_on_stdout(gateway: Gateway, backends: Backends) -> None:
    web = backends("web")
    gateway.write("main.yaml", manifest("main", "docs.example.test", "web", web.port, "docs"))
    gateway.wait_backend("docs.example.test", "web")
    assert gateway.get("docs.example.test", "/guide/intro.html?lang=en").status == 200
    assert gateway.get("nowhere.example.test", "/missing").status == 404

    def logged() -> tuple[dict[str, Any], dict[str, Any]] | None:
        lines = json_lines(gateway.envoy.log_path.read_text(errors="replace"))
        served, unknown = line_for(lines, "/guide/intro.html?lang=en"), line_for(lines, "/missing")
        return (served, unknown) if served and unknown else None

    served, unknown = wait_until(logged, timeout=10, what="the access log lines")
    assert set(served) == set(ACCESS_LOG_FIELDS)
    assert served["domain"] == "docs.example.test"
    assert served["method"] == "GET"
    assert served["status"] == 200
    assert served["upstream_cluster"] == f"docs/web/{web.port}"
    assert isinstance(served["duration_ms"], int)
    assert served["bytes_sent"] > 0
    assert unknown["status"] == 404
    assert unknown["domain"] == "nowhere.example.test"


@pytest.fixture
def gateway_logging_to(tmp_path: Path) -> Iterator[tuple[Path, Gateway]]:
    """A control plane telling its gateway to log to a file, and that gateway."""
    target = tmp_path / "access" / "gateway.json"
    target.parent.mkdir()
    extra = ["--access-log", str(target)]
    with running_gateway(tmp_path, extra=extra, envoy_log_level="warning") as gateway:
        yield target, gateway


def test_a_file_destination_gets_the_lines_and_stdout_none(
    gateway_logging_to: tuple[Path, Gateway], backends: Backends
) -> None:
    target, gateway = gateway_logging_to
    web = backends("web")
    gateway.write("main.yaml", manifest("main", "docs.example.test", "web", web.port, "docs"))
    gateway.wait_backend("docs.example.test", "web")
    response = try_get(gateway.http_port, "docs.example.test", "/to-the-file")
    assert response is not None
    assert response.status == 200

    def logged() -> dict[str, Any] | None:
        text = target.read_text(errors="replace") if target.exists() else ""
        return line_for(json_lines(text), "/to-the-file")

    entry = wait_until(logged, timeout=10, what="the line in the access log file")
    assert entry["upstream_cluster"] == f"docs/web/{web.port}"
    assert line_for(json_lines(gateway.envoy.log_path.read_text(errors="replace")), "/to-the-file") is None
