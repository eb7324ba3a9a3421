"""`render` and `validate`: the builders run once over manifests, nothing served.

Both judge the sites as `serve` does (the gateway groups and grants declared among the
manifests, if any; see `snapshot.tenancy`), print every problem a user must fix (invalid
manifests, sites outside their grants, domains lost to a conflict, then certificates that are
not for their site's domains) and answer 1 when
there is one, else 0.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

from snapshot.builder import BuildOptions, SnapshotBuilder
from snapshot.groups import SiteGroups
from snapshot.model import SiteKey
from snapshot.snapshot import DEFAULT_GROUP, Snapshot
from snapshot.verdict import DOMAIN_NOT_PERMITTED, GATEWAY_GROUP_NOT_FOUND, Phase, SiteState, not_covered
from watcher.folder import FolderSource, read_manifests
from watcher.site_certificates import SecretNames
from watcher.siteset import SiteSet


def build(sites: SiteSet, options: BuildOptions) -> tuple[dict[str, Snapshot], dict[SiteKey, SiteState]]:
    """Each gateway group's snapshot, and every site's state (a refusal by the grants, or its
    builder's verdict)."""
    groups = SiteGroups()
    groups.update(sites.sites, None, sites.tenancy)
    states: dict[SiteKey, SiteState] = dict(groups.refusals)
    snapshots: dict[str, Snapshot] = {}
    for name in groups.groups:
        result = SnapshotBuilder(options, name).build(groups.members(name))
        snapshots[name] = result.snapshot
        states.update(result.sites)
    return snapshots, states


def render(folder: Path, options: BuildOptions) -> int:
    """Print the Envoy resources the sites of `folder` give, as JSON; problems on stderr.

    With gateway groups declared in the folder, each group's resources, by group.
    """
    with _quiet_sources():  # what they would log is what this command prints
        sites = FolderSource(folder).load()
    snapshots, states = build(sites, options)
    if sites.tenancy.enforced:
        shown: object = {"groups": {name: snapshot.to_json() for name, snapshot in snapshots.items()}}
    else:
        shown = snapshots[DEFAULT_GROUP].to_json()
    json.dump(shown, sys.stdout, indent=2, sort_keys=True)  # maps print in any order
    sys.stdout.write("\n")
    lines = problem_lines(sites, states)
    for line in lines:
        print(line, file=sys.stderr)
    return 1 if lines else 0


def validate(paths: Iterable[Path]) -> int:
    """Check manifests (files or folders); a TLS Secret is known by its name alone."""
    with _quiet_sources():  # what they would log is what this command prints
        sites = read_manifests(paths, secrets=SecretNames())  # Secrets are read in the cluster
    _, states = build(sites, BuildOptions())
    lines = problem_lines(sites, states)
    for line in lines:
        print(line)
    if not lines:
        count = len(sites.sites)
        print(f"{count} {'site' if count == 1 else 'sites'}, all valid")
    return 1 if lines else 0


@contextlib.contextmanager
def _quiet_sources() -> Iterator[None]:
    """The sources' own log lines left out: each problem is printed once, by the command."""
    logger = logging.getLogger("staticsite_xds.watcher")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def problem_lines(sites: SiteSet, states: Mapping[SiteKey, SiteState]) -> list[str]:
    """Every problem a user must fix: invalid manifests, sites outside their grants, domains
    lost to a conflict, then certificates that are not for their site's domains (a Secret
    known only by its name is not judged)."""
    lines = [str(p) for p in sites.problems]
    for key, state in sorted(states.items()):
        if state.reason in (DOMAIN_NOT_PERMITTED, GATEWAY_GROUP_NOT_FOUND):
            origin = sites.sites[key].origin if key in sites.sites else str(key)
            field = "spec.gatewayGroup" if state.reason == GATEWAY_GROUP_NOT_FOUND else "spec.domain"
            lines.append(f"{origin}: {field}: {state.message}")
    for key, state in sorted(states.items()):
        if state.phase is Phase.CONFLICT:
            origin = sites.sites[key].origin if key in sites.sites else str(key)
            lines.append(f"{origin}: spec.domain: {state.message}")
    for _key, site in sorted(sites.sites.items()):
        certificate = site.certificate
        if certificate is None:
            continue
        uncovered = [host for host in (*site.hosts, *site.redirect_from) if not certificate.covers(host)]
        if uncovered:
            lines.append(f"{site.origin}: spec.tls: {not_covered(certificate, uncovered)}")
    return lines
