"""Runs `staticsite-xds serve` as a real process on loopback, for the tests and the benchmarks.

Backends are reached at 127.0.0.1 (the servicePort is the backend's port) and the gateways'
listener binds 127.0.0.1; the log goes to a file the caller can read.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from .gateway import REPO_ROOT, stop_process


class ControlPlaneProcess:
    """`serve` on the sites folder `sites`, or (None) on the source `extra` names, such as
    `--kubernetes`; `env` replaces the environment it is given (this process's, if None)."""

    def __init__(
        self,
        sites: Path | None,
        workdir: Path,
        xds_port: int,
        http_port: int,
        *,
        log_level: str = "debug",
        extra: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.sites = sites
        self.env = dict(env) if env is not None else None
        self.xds_port = xds_port
        self.http_port = http_port
        self.log_level = log_level
        self.extra = list(extra)
        self.log_path = workdir / "control-plane.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> ControlPlaneProcess:
        """Start it and wait until its ADS port accepts connections (or it exits: an error)."""
        cmd = [
            sys.executable,
            "-m",
            "xds_server.cli",
            "--log-level",
            self.log_level,
            "serve",
            *(["--sites", str(self.sites)] if self.sites is not None else []),
            "--xds-address",
            f"127.0.0.1:{self.xds_port}",
            "--http-port",
            str(self.http_port),
            "--listen-address",
            "127.0.0.1",
            "--backend-host-template",
            "127.0.0.1",
            *self.extra,
        ]
        with self.log_path.open("ab") as logfile:
            self.process = subprocess.Popen(
                cmd,
                cwd=REPO_ROOT,
                stdout=logfile,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.env,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"the control plane exited with {self.process.returncode}: {self.log()[-2000:]}"
                )
            if port_open(self.xds_port):
                return self
            time.sleep(0.02)
        self.stop()
        raise TimeoutError(f"the control plane did not listen on {self.xds_port}: {self.log()[-2000:]}")

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int | None:
        """Signal it, wait (bounded), then kill it; return its exit status."""
        if self.process is None:
            return None
        stop_process(self.process, sig, timeout)
        return self.process.returncode


def port_open(port: int) -> bool:
    """True when something accepts connections on 127.0.0.1:port."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False
