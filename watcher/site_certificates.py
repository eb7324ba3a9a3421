"""How a site's `spec.tls` becomes the certificate it is served with: one interface for every source.

A `CertificateResolver` turns a site's `spec.tls` into a certificate, or into the problems
that name the field at fault, or says that the certificate is being read. The sources and
`staticsite-xds validate` ask one and never read certificates themselves:

- `CertificateFiles`: `certificateFile` and `keyFile` beside a manifest (the folder source);
- `watcher.k8s_secrets.FollowedSecrets`: `kubernetes.io/tls` Secrets (the Kubernetes source);
- `SecretNames`: a Secret known by name alone (manifests checked offline), enough for the
  builder to judge the site, never to serve it.

`SiteCertificates` sends each site to the one that reads what its `spec.tls` names. The
checks of a pair (PEM, a key that belongs to the leaf) are `snapshot.certificates`'s; a file
is read within bounds by `read_pem`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from snapshot.certificates import MAX_PEM_BYTES, BadCertificate, load_certificate, secret_certificate_name
from snapshot.model import Certificate, InvalidSite, NamedCertificate, Problem, StaticSite
from snapshot.verdict import invalid_certificate

from .manifest_file import FileTooLarge, NotRegularFile, read_bounded

# How a certificate or key file looked when it was read: its modification and change times
# (a chmod that makes it readable changes the latter), size and inode; None if it was missing.
FileStamp = tuple[int, int, int, int]


@dataclass(frozen=True, slots=True)
class CertificateProblems:
    """Why a site's certificate cannot be served: problems that name the field of `spec.tls`."""

    problems: tuple[Problem, ...]


@dataclass(frozen=True, slots=True)
class CertificatePending:
    """The certificate is being read (a Secret newly named): the site is judged once it is in."""

    namespace: str
    secret: str


Resolution = Certificate | CertificateProblems | CertificatePending


class CertificateResolver(Protocol):
    def resolve(self, site: StaticSite) -> Resolution:
        """The certificate a site's `spec.tls` names (the site has one)."""
        ...


def resolved(site: StaticSite, resolution: Resolution) -> Certificate | CertificatePending:
    """A resolution's certificate (or that it is pending); its problems raised as `InvalidSite`."""
    if isinstance(resolution, CertificateProblems):
        raise InvalidSite(list(resolution.problems), site.key)
    return resolution


def _problem(site: StaticSite, field: str, message: str) -> CertificateProblems:
    return CertificateProblems((Problem(site.origin, field, message),))


@dataclass(frozen=True, slots=True)
class SiteCertificates:
    """Resolves each site by what its `spec.tls` names: files, or a Secret. A source that reads
    no files (or no Secrets) leaves that one None, and a site naming it is told so."""

    files: CertificateResolver | None = None
    secrets: CertificateResolver | None = None

    def resolve(self, site: StaticSite) -> Resolution:
        tls = site.tls
        assert tls is not None
        if tls.secret_name is not None:
            if self.secrets is None:
                message = "a folder of sites cannot read Kubernetes Secrets; give certificateFile and keyFile"
                return _problem(site, "spec.tls.secretName", message)
            return self.secrets.resolve(site)
        if self.files is None:
            message = "only a folder of sites reads certificate files; name a Secret with secretName"
            return _problem(site, "spec.tls.certificateFile", message)
        return self.files.resolve(site)


class SecretNames:
    """A site's Secret known by name alone: for checking Kubernetes manifests offline."""

    def resolve(self, site: StaticSite) -> Resolution:
        assert site.tls is not None
        assert site.tls.secret_name is not None
        return NamedCertificate(secret_certificate_name(site.key.namespace, site.tls.secret_name))


@dataclass(slots=True)
class FilesRead:
    """The certificate and key files the sites of one manifest name, as they were when they
    were read, and those paths with the files their links lead to (where a change shows)."""

    manifest: Path
    stamps: dict[Path, FileStamp | None]
    watched: set[Path]


class CertificateFiles:
    """Certificates from `certificateFile` and `keyFile`, relative to the manifest's folder (or
    absolute). A chain file's certificate is checked once per content, however many sites
    share it."""

    def __init__(self) -> None:
        self._loaded: dict[Path, Certificate] = {}  # the certificate last made of each chain file

    def forget(self, path: Path) -> None:
        """No manifest names this file any more."""
        self._loaded.pop(path, None)

    def beside(self, read: FilesRead) -> CertificateResolver:
        """The resolver for the sites of one manifest; the files read are recorded in `read`."""
        return _BesideManifest(self, read)

    def resolve(self, site: StaticSite, read: FilesRead) -> Resolution:
        """The files are recorded, with how they looked, even when they cannot be read: a
        missing file that appears re-reads the manifest."""
        tls = site.tls
        assert tls is not None
        if tls.certificate_file is None or tls.key_file is None:  # parse_site requires both
            return _problem(site, "spec.tls", "needs certificateFile and keyFile")
        problems: list[Problem] = []
        contents: list[tuple[Path, bytes]] = []
        for where, given in (
            ("spec.tls.certificateFile", tls.certificate_file),
            ("spec.tls.keyFile", tls.key_file),
        ):
            file = beside(read.manifest, given)
            data, stamp, error = read_pem(file)
            # The first look is kept: if a file changed between two reads, it is read again.
            read.stamps.setdefault(file, stamp)
            read.watched.update(followed(file))
            if error is not None:
                problems.append(Problem(site.origin, where, f"cannot read {file}: {error}"))
            contents.append((file, data))
        if problems:
            return CertificateProblems(tuple(problems))
        (chain_file, chain), (key_file, key) = contents
        certificate = self._loaded.get(chain_file)
        if certificate is None or (certificate.chain, certificate.key) != (chain, key):
            try:
                certificate = load_certificate(f"file/{chain_file}", chain, key)
            except BadCertificate as exc:
                return CertificateProblems(
                    (invalid_certificate(site.origin, chain_file, key_file, str(exc)),)
                )
            self._loaded[chain_file] = certificate
        return certificate


@dataclass(frozen=True, slots=True)
class _BesideManifest:
    files: CertificateFiles
    read: FilesRead

    def resolve(self, site: StaticSite) -> Resolution:
        return self.files.resolve(site, self.read)


def beside(manifest: Path, given: str) -> Path:
    """A file a manifest names: relative to the manifest's folder, or absolute.

    The path is made absolute without following links, so that it names the same file when
    a link on the way is re-pointed (a renewed Secret volume): it is the certificate's SDS name.
    """
    return Path(os.path.abspath(manifest.parent / given))


def followed(path: Path) -> set[Path]:
    """A path, and the file its links lead to: where a change of the file shows."""
    try:
        return {path, Path(os.path.realpath(path))}
    except (OSError, RuntimeError, ValueError):  # a loop of links, on some versions
        return {path}


def file_stamp(info: os.stat_result) -> FileStamp:
    return (info.st_mtime_ns, info.st_ctime_ns, info.st_size, info.st_ino)


def stamp_now(path: Path) -> FileStamp | None:
    try:
        return file_stamp(path.stat())
    except (OSError, ValueError):
        return None


def read_pem(path: Path) -> tuple[bytes, FileStamp | None, str | None]:
    """A certificate or key file's bytes, how it looked when read, and why it cannot be read.

    Like a manifest, it is read within bounds: a FIFO, a device or a huge file is refused
    before it costs more than reading its bytes once.
    """
    opened: list[os.stat_result] = []  # how the file looked when it was opened, before reading
    data, error = b"", None
    try:
        data = read_bounded(path, MAX_PEM_BYTES, opened.append)
    except NotRegularFile:
        error = "it is not a regular file"
    except FileTooLarge as exc:
        error = f"it is {exc.size}; a certificate or key file may have at most {MAX_PEM_BYTES} bytes"
    except OSError as exc:
        error = exc.strerror or str(exc)
    except ValueError as exc:
        error = " ".join(str(exc).split())
    # Taken before reading, so that a later change shows; as the path looks now if not opened.
    stamp = file_stamp(opened[0]) if opened else stamp_now(path)
    return data, stamp, error
