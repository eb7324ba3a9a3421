"""The one build step pyproject.toml cannot say: the wheel carries Envoy's bootstraps and the
StaticSite and GatewayGroup CRDs as package data of xds_server (see xds_server/shipped_files.py).

They stay in the repository's top-level envoy/ and crds/ folders, where kustomize reads
them, and are copied into the package only when it is built; an editable install reads them
in place.
"""

from __future__ import annotations

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
# folder -> the files it ships
SHIPPED = {"envoy": ("bootstrap*.yaml",), "crds": ("staticsite.yaml", "gatewaygroup.yaml")}
PACKAGE_DATA = Path("xds_server", "shipped")


class BuildWithShippedFiles(build_py):
    def run(self) -> None:
        super().run()
        if self.editable_mode:
            return
        for folder, patterns in SHIPPED.items():
            target = Path(self.build_lib) / PACKAGE_DATA / folder
            self.mkpath(str(target))
            for pattern in patterns:
                files = sorted((ROOT / folder).glob(pattern))
                if not files:
                    raise FileNotFoundError(f"{ROOT / folder}: no {pattern} to ship")
                for file in files:
                    self.copy_file(str(file), str(target / file.name))


setup(cmdclass={"build_py": BuildWithShippedFiles})
