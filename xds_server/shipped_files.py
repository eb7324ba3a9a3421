"""Where the files the package ships are found: Envoy's bootstraps and the StaticSite CRD.

The repository keeps them in its top-level `envoy/` and `crds/` folders, where kustomize reads
them. A wheel carries copies as package data of `xds_server`, in `shipped/` (setup.py puts
them there at build time); an editable install or a bare checkout has no copies and reads
them from the source tree.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

PACKAGE_DATA = "shipped"  # the folder of the package that holds the copies in a wheel

EnvoyBootstrap = Literal["bootstrap.yaml", "bootstrap-local.yaml", "bootstrap-mtls.yaml"]

# The folder of the top-level package, whichever of its folders this module is in. (Not found
# through importlib.resources: the package is a namespace package, which that cannot always
# read when installed in editable mode.)
_PACKAGE_DIR = Path(__file__).resolve().parents[__name__.count(".") - 1]


def envoy_bootstrap(name: EnvoyBootstrap) -> Path:
    """One of Envoy's bootstraps: for the gateways of a cluster, for a local Envoy, with mTLS."""
    return _shipped("envoy", name)


def staticsite_crd() -> Path:
    """The CustomResourceDefinition of StaticSite (what `kubectl apply -f` installs)."""
    return _shipped("crds", "staticsite.yaml")


def _shipped(folder: str, name: str) -> Path:
    """The package's copy if it has one, else the source tree's file (the copy's path if
    neither exists, so that an error names where an installed package should have it)."""
    copy = _PACKAGE_DIR / PACKAGE_DATA / folder / name
    if copy.is_file():
        return copy
    source = _PACKAGE_DIR.parent / folder / name
    return source if source.is_file() else copy
