"""Pure, synchronous: StaticSite objects in, immutable versioned Envoy snapshots out."""

from .builder import BuildOptions, BuildResult, SnapshotBuilder
from .consistency import InconsistentSnapshot
from .model import API_VERSION, GROUP, KIND, Backend, InvalidSite, Problem, SiteKey, StaticSite, parse_site
from .snapshot import EMPTY, Resource, ResourceSet, Snapshot
from .verdict import Phase, SiteState

__all__ = [
    "API_VERSION",
    "EMPTY",
    "GROUP",
    "KIND",
    "Backend",
    "BuildOptions",
    "BuildResult",
    "InconsistentSnapshot",
    "InvalidSite",
    "Phase",
    "Problem",
    "Resource",
    "ResourceSet",
    "SiteKey",
    "SiteState",
    "Snapshot",
    "SnapshotBuilder",
    "StaticSite",
    "parse_site",
]
