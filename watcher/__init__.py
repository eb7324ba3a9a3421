"""Where sites come from: a folder of manifests (the default) or the Kubernetes API."""

from .folder import FolderSource
from .siteset import SiteChanges, SiteSet, changes

__all__ = ["FolderSource", "SiteChanges", "SiteSet", "changes"]
