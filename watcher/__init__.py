"""Where sites come from: a folder of manifests (the default) or the Kubernetes API."""

from .folder import FolderSource
from .siteset import SiteSet, merge_changes

__all__ = ["FolderSource", "SiteSet", "merge_changes"]
