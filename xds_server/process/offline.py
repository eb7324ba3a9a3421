"""`render` and `validate`: the builder run once over manifests, nothing served.

Both print every problem a user must fix (invalid manifests, then domains lost to a
conflict) and answer 1 when there is one, else 0.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

from snapshot.builder import BuildOptions, SnapshotBuilder
from snapshot.model import SiteKey
from snapshot.verdict import Phase, SiteState
from watcher.folder import FolderSource, read_manifests
from watcher.site_certificates import SecretNames
from watcher.siteset import SiteSet


def render(folder: Path, options: BuildOptions) -> int:
    """Print the Envoy resources the sites of `folder` give, as JSON; problems on stderr."""
    sites = FolderSource(folder).load()
    result = SnapshotBuilder(options).build(sites.sites.values())
    json.dump(result.snapshot.to_json(), sys.stdout, indent=2, sort_keys=True)  # maps print in any order
    sys.stdout.write("\n")
    lines = problem_lines(sites, result.sites)
    for line in lines:
        print(line, file=sys.stderr)
    return 1 if lines else 0


def validate(paths: Iterable[Path]) -> int:
    """Check manifests (files or folders); a TLS Secret is known by its name alone."""
    sites = read_manifests(paths, secrets=SecretNames())  # Secrets are read in the cluster
    result = SnapshotBuilder().build(sites.sites.values())
    lines = problem_lines(sites, result.sites)
    for line in lines:
        print(line)
    if not lines:
        print(f"{len(sites.sites)} sites, all valid", file=sys.stderr)
    return 1 if lines else 0


def problem_lines(sites: SiteSet, states: Mapping[SiteKey, SiteState]) -> list[str]:
    """Every problem a user must fix: invalid manifests, then domains lost to a conflict."""
    lines = [str(p) for p in sites.problems]
    for key, state in sorted(states.items()):
        if state.phase is Phase.CONFLICT:
            origin = sites.sites[key].origin if key in sites.sites else str(key)
            lines.append(f"{origin}: spec.domain: {state.message}")
    return lines
