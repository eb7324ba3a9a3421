"""Flags every command shares: the version, and the log's level and format, before or after
the command."""

from __future__ import annotations

import json
import logging

import pytest

from xds_server import cli
from xds_server.operations import log_format

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("argv", "level", "form"),
    [
        (["validate", "x.yaml"], "info", "text"),
        (["--log-level", "debug", "validate", "x.yaml"], "debug", "text"),
        (["validate", "x.yaml", "--log-level", "error", "--log-format", "json"], "error", "json"),
        (["--log-format", "json", "render", "dir"], "info", "json"),
        (["--log-level", "debug", "status", "--log-level", "warning"], "warning", "text"),  # the later wins
    ],
)
def test_log_flags_before_or_after_the_command(argv: list[str], level: str, form: str) -> None:
    args = cli._parser().parse_args(argv)
    assert (args.log_level, args.log_format) == (level, form)


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli._parser().parse_args(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.startswith("staticsite-xds ")


def test_json_log_lines(capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        log_format.configure("info", "json")
        logging.getLogger("staticsite_xds.test").info("site %s is %s", "docs/a", "Provisioned")
        try:
            raise ValueError("boom")
        except ValueError:
            logging.getLogger("staticsite_xds.test").exception("it failed")
        logging.getLogger("staticsite_xds.test").debug("not shown")
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    first, second = (json.loads(line) for line in capsys.readouterr().err.splitlines())
    assert first["message"] == "site docs/a is Provisioned"
    assert (first["level"], first["logger"]) == ("info", "staticsite_xds.test")
    assert first["time"].endswith("+00:00")
    assert second["level"] == "error"
    assert "ValueError: boom" in second["exception"]
