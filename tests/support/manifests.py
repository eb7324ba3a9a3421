"""StaticSite manifests on disk."""

from __future__ import annotations

from pathlib import Path

from snapshot.model import API_VERSION


def write(path: Path, text: str) -> Path:
    """Write a file, making its folders first."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def manifest(name: str, domain: str, service: str, port: int, namespace: str = "default") -> str:
    meta = f"{{name: {name}, namespace: {namespace}}}"
    return (
        f"apiVersion: {API_VERSION}\nkind: StaticSite\nmetadata: {meta}\n"
        f"spec:\n  domain: {domain}\n  backend: {{serviceName: {service}, servicePort: {port}}}\n"
    )
