"""The package as pip installs it: the wheel deploy/Dockerfile builds, installed into a fresh
virtual environment, serves the demo through a real Envoy from a folder outside the checkout.

An editable install reads Envoy's bootstraps and the CRD in the source tree; only a wheel
shows whether they are package data.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support.dockerfile import build_stages
from support.processes import free_port, try_get
from support.waiting import wait_until

from xds_server.local.gateway import REPO_ROOT, stop_process

pytestmark = pytest.mark.envoy

DOCKERFILE = REPO_ROOT / "deploy" / "Dockerfile"


def _run(*cmd: str | Path, cwd: Path, timeout: float = 240.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(c) for c in cmd],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env=_outside_env(),
        stdin=subprocess.DEVNULL,
        check=False,
    )


def _outside_env() -> dict[str, str]:
    """This environment without what would let a process import the checkout's packages."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}


def build_context(dest: Path) -> None:
    """What the first stage of deploy/Dockerfile copies, laid out as it lays it out."""
    build, *_ = build_stages()
    for instruction in build:
        if instruction.keyword != "COPY" or instruction.value.startswith("--"):
            continue
        *sources, target = instruction.value.split()
        into = dest / target
        for name in sources:
            source = REPO_ROOT / name
            if source.is_dir():
                shutil.copytree(
                    source, into, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__")
                )
            else:
                into.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, into / source.name)


def build_wheel(context: Path, wheels: Path) -> Path:
    """The wheel, built as the image builds it (`pip wheel --no-deps`, isolated build)."""
    built = _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--wheel-dir", wheels, ".", cwd=context)
    if built.returncode != 0:
        # Ours to fix, unless pip cannot fetch the build backend at all (no index reachable).
        backend = _run(
            sys.executable, "-m", "pip", "download", "--no-deps", "--dest", wheels / "backend",
            "setuptools>=68", cwd=context,
        )  # fmt: skip
        if backend.returncode != 0:
            pytest.skip(f"the build backend (setuptools>=68) cannot be fetched: {backend.stderr[-500:]}")
        pytest.fail(f"the wheel cannot be built:\n{built.stdout[-3000:]}\n{built.stderr[-3000:]}")
    (wheel,) = wheels.glob("staticsite_xds-*.whl")
    return wheel


def install(wheel: Path, constraints: Path, venv: Path) -> Path:
    """A fresh virtual environment with the wheel and its `local` extra (the Envoy binary),
    at the versions of the constraints file; its `staticsite-xds` command."""
    made = _run(sys.executable, "-m", "venv", venv, cwd=venv.parent)
    if made.returncode != 0:
        pytest.skip(f"this Python cannot make a virtual environment: {made.stderr[-500:]}")
    python = venv / "bin" / "python"
    installed = _run(
        python, "-m", "pip", "install", "--disable-pip-version-check", "--quiet",
        "--constraint", constraints, f"{wheel}[local]", cwd=venv.parent,
    )  # fmt: skip
    assert installed.returncode == 0, installed.stdout[-3000:] + installed.stderr[-3000:]
    return venv / "bin" / "staticsite-xds"


@pytest.mark.timeout(420)
def test_the_installed_wheel_serves_the_demo_from_any_folder(tmp_path: Path) -> None:
    started = time.monotonic()
    context = tmp_path / "src"
    build_context(context)
    wheel = build_wheel(context, tmp_path / "wheels")
    command = install(wheel, context / "constraints.txt", tmp_path / "venv")

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = _run(
        command.parent / "python", "-c",
        "from xds_server import shipped_files as f; print(f.envoy_bootstrap('bootstrap.yaml')); print(f.staticsite_crd())",
        cwd=elsewhere,
    )  # fmt: skip
    assert where.returncode == 0, where.stderr[-3000:]
    for line in where.stdout.splitlines():
        shipped = Path(line)
        assert shipped.is_relative_to(tmp_path / "venv"), where.stdout
        assert shipped.is_file(), where.stdout

    ports = [free_port() for _ in range(5)]
    xds_port, http_port, https_port, admin_port, metrics_port = ports
    assert len(set(ports)) == 5, ports
    out = tmp_path / "demo.out"
    with out.open("wb") as sink:
        demo = subprocess.Popen(
            [
                str(command), "demo", "--sites", "sites",
                "--xds-port", str(xds_port), "--http-port", str(http_port),
                "--https-port", str(https_port), "--admin-port", str(admin_port),
                "--metrics-port", str(metrics_port),
            ],
            cwd=elsewhere,
            env=_outside_env(),
            stdout=sink,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )  # fmt: skip

    def served() -> bool:
        if demo.poll() is not None:
            raise AssertionError(f"the demo exited with {demo.returncode}:\n{out.read_text()[-3000:]}")
        response = try_get(http_port, "docs.example.test")
        return response is not None and response.status == 200

    try:
        wait_until(served, timeout=90, interval=0.1, what="an HTTP 200 through the installed demo's Envoy")
    finally:
        stop_process(demo, signal.SIGINT, timeout=15)
    assert demo.returncode == 0, out.read_text()[-3000:]
    assert (elsewhere / "sites" / "docs-main.yaml").is_file()
    print(f"wheel built, installed and served in {time.monotonic() - started:.1f}s")
