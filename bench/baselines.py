"""The baselines: nginx reloading a full configuration, and Envoy alone fed by watched files.

Both serve the same sites as our control plane (one upstream or cluster per site's Service,
one server block or virtual host per domain, a 404 for an unknown domain), so a one-site
change costs each what it costs in production.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from snapshot.builder import BuildOptions, SnapshotBuilder
from snapshot.model import StaticSite
from snapshot.resources import CLUSTER_TYPE, LISTENER_TYPE, UNKNOWN_DOMAIN_HOST
from xds_server.local.control_plane import port_open
from xds_server.local.gateway import LocalEnvoy, stop_process

from .harness import (
    site_domain,
    tail,
    tree_rss_mb,
    wait_for,
    write_atomic,
)

# -- nginx ---------------------------------------------------------------------------------


def nginx_binary() -> str | None:
    found = shutil.which("nginx")
    if found:
        return found
    for candidate in ("/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/local/nginx/sbin/nginx"):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


NGINX_MISSING = "nginx: not installed (apt-get install nginx); baseline skipped"


class Nginx:
    """An nginx master (daemon off) in a temporary prefix, listening on 127.0.0.1:port."""

    def __init__(self, binary: str, prefix: Path, http_port: int) -> None:
        self.binary = binary
        self.prefix = prefix
        self.http_port = http_port
        self.conf = prefix / "nginx.conf"
        self.error_log = prefix / "error.log"
        self.process: subprocess.Popen[bytes] | None = None
        for sub in ("tmp", "logs"):
            (prefix / sub).mkdir(parents=True, exist_ok=True)

    def _args(self) -> list[str]:
        return [self.binary, "-p", str(self.prefix), "-c", str(self.conf), "-e", str(self.error_log)]

    def render(self, sites: Mapping[int, int]) -> str:
        """The whole configuration for `sites` (site index -> backend port)."""
        p = self.prefix
        user = "user root;\n" if os.geteuid() == 0 else ""  # workers keep our identity
        head = (
            f"{user}worker_processes 1;\ndaemon off;\npid {p}/nginx.pid;\n"
            f"error_log {self.error_log} warn;\n"
            "events { worker_connections 4096; }\n"
            "http {\n"
            "  access_log off;\n"
            f"  client_body_temp_path {p}/tmp/body;\n  proxy_temp_path {p}/tmp/proxy;\n"
            f"  fastcgi_temp_path {p}/tmp/fastcgi;\n  uwsgi_temp_path {p}/tmp/uwsgi;\n"
            f"  scgi_temp_path {p}/tmp/scgi;\n"
            f"  server_names_hash_max_size {max(1024, 4 * len(sites))};\n"
            "  server_names_hash_bucket_size 128;\n"
            "  keepalive_timeout 65s;\n  keepalive_requests 100000;\n"
            '  proxy_http_version 1.1;\n  proxy_set_header Connection "";\n'
            "  proxy_set_header Host $host;\n  proxy_connect_timeout 2s;\n"
            f"  server {{ listen 127.0.0.1:{self.http_port} default_server; return 404; }}\n"
        )
        # One upstream per backend (keep-alive connections to it), shared by its sites: the
        # light way to configure nginx. An upstream block per site's Service, as Envoy has a
        # cluster per Service, makes nginx's parse of the configuration grow quadratically.
        upstreams = [
            f"  upstream backend-{port} {{ server 127.0.0.1:{port}; keepalive 16; }}\n"
            for port in sorted(set(sites.values()))
        ]
        blocks = [
            f"  server {{ listen 127.0.0.1:{self.http_port}; server_name {site_domain(i)};\n"
            f"    location / {{ proxy_pass http://backend-{port}; }} }}\n"
            for i, port in sorted(sites.items())
        ]
        return head + "".join(upstreams) + "".join(blocks) + "}\n"

    def write_config(self, text: str) -> None:
        write_atomic(self.conf, text)

    def start(self, timeout: float = 60) -> Nginx:
        log_path = self.prefix / "nginx.out"
        with log_path.open("ab") as out:
            self.process = subprocess.Popen(
                self._args(), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )

        def up() -> bool:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(
                    f"nginx exited with {self.process.returncode}: {tail(log_path)} {tail(self.error_log)}"
                )
            return port_open(self.http_port)

        wait_for(up, timeout, "nginx to listen")
        return self

    def reload(self, timeout: float = 120) -> None:
        """`nginx -s reload`, as a controller runs it after writing the configuration."""
        done = subprocess.run(
            [*self._args(), "-s", "reload"], capture_output=True, timeout=timeout, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(f"nginx -s reload failed: {done.stderr.decode(errors='replace').strip()}")

    def rss_mb(self) -> float | None:
        """Master and workers (including old workers still draining after a reload)."""
        return tree_rss_mb(self.process.pid) if self.process is not None else None

    def stop(self) -> None:
        stop_process(self.process, timeout=15)


# -- Envoy fed by files --------------------------------------------------------------------


class FileFedEnvoy:
    """Envoy alone, its CDS and LDS read from files it watches (path_config_source).

    The resources come from our own builder (`Snapshot.to_json()`), so they are what our
    control plane serves; the listener carries the route configuration inline (there is no
    RDS without a server). Each change rewrites both files, each by a rename into its own
    watched folder.
    """

    def __init__(self, workdir: Path, http_port: int, admin_port: int, options: BuildOptions) -> None:
        self.workdir = workdir
        self.options = options
        self.cds_dir = workdir / "cds"
        self.lds_dir = workdir / "lds"
        self.cds_dir.mkdir(parents=True, exist_ok=True)
        self.lds_dir.mkdir(parents=True, exist_ok=True)
        self.cds_path = self.cds_dir / "cds.json"
        self.lds_path = self.lds_dir / "lds.json"
        self.clusters: dict[str, dict[str, Any]] = {}
        self.vhosts: dict[str, dict[str, Any]] = {}
        self.catch_all: dict[str, Any] = {}
        self.listener: dict[str, Any] = {}
        self.route_name = ""
        self.version = 0
        self._retired: set[str] = set()
        bootstrap = {
            "node": {"id": "bench-files", "cluster": "bench"},
            "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
            "dynamic_resources": {
                "cds_config": {
                    "resource_api_version": "V3",
                    "path_config_source": {
                        "path": str(self.cds_path),
                        "watched_directory": {"path": str(self.cds_dir)},
                    },
                },
                "lds_config": {
                    "resource_api_version": "V3",
                    "path_config_source": {
                        "path": str(self.lds_path),
                        "watched_directory": {"path": str(self.lds_dir)},
                    },
                },
            },
        }
        self.envoy = LocalEnvoy(bootstrap, workdir / "envoy")

    # resources

    def load(self, sites: Iterable[StaticSite]) -> None:
        """Take every resource from a full build of `sites`."""
        data = SnapshotBuilder(self.options).build(sites).snapshot.to_json()
        self.clusters = {c["name"]: c for c in data["Cluster"]}
        (route,) = data["RouteConfiguration"]
        self.route_name = route["name"]
        self.vhosts = {}
        for vhost in route.get("virtualHosts", []):
            if vhost["name"] == UNKNOWN_DOMAIN_HOST:
                self.catch_all = vhost
            else:
                self.vhosts[vhost["name"]] = vhost
        (self.listener,) = data["Listener"]

    def add(self, site: StaticSite) -> None:
        """Add (or replace) one site: its cluster and virtual host, built by our builder."""
        data = SnapshotBuilder(self.options).build([site]).snapshot.to_json()
        for cluster in data["Cluster"]:
            self.clusters[cluster["name"]] = cluster
        (route,) = data["RouteConfiguration"]
        for vhost in route.get("virtualHosts", []):
            if vhost["name"] != UNKNOWN_DOMAIN_HOST:
                self.vhosts[vhost["name"]] = vhost

    def _unused_clusters(self) -> set[str]:
        used = {
            r["route"]["cluster"] for v in self.vhosts.values() for r in v.get("routes", []) if "route" in r
        }
        return set(self.clusters) - used

    def _prune(self) -> None:
        """Make before break: a cluster no route uses is dropped one change after it fell out of
        use, so the listener file that stops using it has been read before it goes."""
        for name in self._retired & self._unused_clusters():
            del self.clusters[name]
        self._retired = self._unused_clusters()

    def matches_full_build(self, sites: Iterable[StaticSite]) -> bool:
        """True when the merged resources equal those of one full build of `sites`."""
        for name in self._unused_clusters():
            del self.clusters[name]
        merged = (self.clusters, self.vhosts, self.catch_all, self.listener)
        self.load(sites)
        fresh = (self.clusters, self.vhosts, self.catch_all, self.listener)
        return _canonical(merged) == _canonical(fresh)

    def render(self) -> tuple[str, str]:
        """The CDS and LDS files (DiscoveryResponse JSON) for the current resources."""
        self.version += 1
        self._prune()
        clusters = [{"@type": CLUSTER_TYPE, **c} for _, c in sorted(self.clusters.items())]
        listener = json.loads(json.dumps(self.listener))
        hcm = listener["filterChains"][0]["filters"][0]["typedConfig"]
        hcm.pop("rds", None)
        hcm["routeConfig"] = {
            "name": self.route_name,
            "virtualHosts": [v for _, v in sorted(self.vhosts.items())] + [self.catch_all],
        }
        version = str(self.version)
        cds = json.dumps({"versionInfo": version, "resources": clusters, "typeUrl": CLUSTER_TYPE})
        lds = json.dumps(
            {
                "versionInfo": version,
                "resources": [{"@type": LISTENER_TYPE, **listener}],
                "typeUrl": LISTENER_TYPE,
            }
        )
        return cds, lds

    def write(self, cds: str, lds: str) -> None:
        """Clusters first (the routes point at them), each file renamed into its watched folder."""
        write_atomic(self.cds_path, cds)
        write_atomic(self.lds_path, lds)

    # process

    def start(self, timeout: float = 120) -> FileFedEnvoy:
        self.envoy.start(timeout=timeout)
        return self

    def rss_mb(self) -> float | None:
        return tree_rss_mb(self.envoy.process.pid) if self.envoy.process is not None else None

    def stop(self) -> None:
        self.envoy.stop()


def _canonical(value: object) -> str:
    return json.dumps(value, sort_keys=True)
