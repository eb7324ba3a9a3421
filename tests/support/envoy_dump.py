"""What a running Envoy holds, read from its admin config dump."""

from __future__ import annotations

from typing import Any

from xds_server.local.gateway import LocalEnvoy


def dynamic(envoy: LocalEnvoy, kind: str, key: str) -> list[dict[str, Any]]:
    """The entries `key` of the config dump's section `kind` (ClustersConfigDump...)."""
    for config in envoy.config_dump()["configs"]:
        if config["@type"].endswith("." + kind):
            entries: list[dict[str, Any]] = config.get(key, [])
            return entries
    return []


def route_domains(envoy: LocalEnvoy) -> set[str]:
    """Every domain of every virtual host of the route configurations Envoy took by RDS."""
    return {
        domain
        for route in dynamic(envoy, "RoutesConfigDump", "dynamic_route_configs")
        for host in route["route_config"].get("virtual_hosts", [])
        for domain in host.get("domains", [])
    }
