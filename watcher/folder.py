"""The folder source: StaticSite manifests in YAML files, loaded and then watched.

Files ending in .yaml, .yml or .json anywhere below the folder are read (hidden files and
folders are skipped, which also skips the `..data` links of a mounted ConfigMap while still
reading its files). A file may hold several documents; documents of other kinds are ignored
with a note, but for GatewayGroups and Namespaces (see below). A file that fails to parse, or a document that fails validation, is reported and
leaves every other site untouched; a site whose declaration turns invalid keeps serving its
last good version until it is fixed or its file is deleted.

A site with `spec.tls` names a PEM certificate chain and its unencrypted private key by
`certificateFile` and `keyFile`, relative to its manifest's folder (or absolute). Both are
read, and checked, with the manifest: a file that cannot be read or a pair that cannot be
served makes the declaration invalid, like a problem in its spec. Each manifest remembers
the certificate files it read and how they looked, so that a certificate renewed on disk
(written in place, renamed over, or a link re-pointed as in a mounted Secret) re-reads the
manifests that name it, and the sites are served with the new certificate under the same
SDS name, with no restart. The watcher sees changes below the folder as they happen; it gets
no event for a file outside the folder (or the target of a link leading out of it), so it
compares those files between batches of events, about every half second, and every full load
compares them all.

`kind: GatewayGroup` documents declare the gateway groups and their domain grants, and
`kind: Namespace` documents give namespaces the labels grant selectors see (a namespace with
no Namespace document has none). When no file declares a GatewayGroup the tenancy is `OPEN`:
one default group, every domain permitted. Once one does (even one that cannot be read), it
is enforced as in a cluster. A GatewayGroup that turns invalid, or a file that can no longer
be read, keeps its last good groups, as sites keep their last good version. The set carries
the same `Tenancy` object until a declaration of it changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import difflib
import logging
import os
import stat
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from snapshot.certificates import with_certificate
from snapshot.model import (
    GROUP,
    KIND,
    InvalidSite,
    Problem,
    SiteKey,
    StaticSite,
    describe,
    is_static_site,
    parse_site,
    site_key_of,
    type_name,
)
from snapshot.tenancy import (
    GATEWAY_GROUP_KIND,
    OPEN,
    GatewayGroup,
    InvalidGatewayGroup,
    InvalidNamespace,
    Tenancy,
    is_gateway_group,
    is_namespace,
    parse_gateway_group,
    parse_namespace,
)

from .manifest_file import DEFAULT_MAX_MANIFEST_BYTES, read_documents
from .site_certificates import (
    CertificateFiles,
    CertificatePending,
    CertificateResolver,
    FilesRead,
    FileStamp,
    SiteCertificates,
    resolved,
    stamp_now,
)
from .siteset import DEFAULT_MAX_SITES, FirstSeen, SiteLimit, SiteSet
from .source_state import SourceState

log = logging.getLogger("staticsite_xds.watcher.folder")

MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")

# How long the watcher waits for a change before it reports a timeout; the first timeout
# (or batch) tells that the watcher is in place, see `watch`.
_WATCH_TIMEOUT_MS = 500
_RECHECK_SECONDS = 1.0  # how often a folder that cannot be read or watched is tried again


@dataclass(slots=True)
class _TenancyPart:
    """What one file declares of the tenancy: gateway groups, namespaces' labels, and the
    problems of the GatewayGroup and Namespace documents it could not read."""

    declares_groups: bool = False  # a GatewayGroup document, even one that cannot be read
    groups: dict[str, GatewayGroup] = field(default_factory=dict)
    namespaces: dict[str, Mapping[str, str]] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)


@dataclass(slots=True)
class _FileState:
    """What one file declared the last time it was read, and how it looked on disk."""

    stamp: tuple[int, int, int]
    sites: dict[SiteKey, StaticSite] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    invalid: dict[SiteKey, tuple[Problem, ...]] = field(default_factory=dict)
    # The certificate and key files its sites name, as they were when they were read:
    certificates: dict[Path, FileStamp | None] = field(default_factory=dict)
    # Those paths and the files their links lead to: a change of any of them re-reads the file.
    watched: set[Path] = field(default_factory=set)
    tenancy: _TenancyPart = field(default_factory=_TenancyPart)


class FolderSource:
    """Reads a folder of manifests and keeps the site set current as files change."""

    def __init__(
        self,
        root: Path | str,
        *,
        force_polling: bool = False,
        max_manifest_bytes: int = DEFAULT_MAX_MANIFEST_BYTES,
        max_sites: int = DEFAULT_MAX_SITES,
        secrets: CertificateResolver | None = None,
    ) -> None:
        """`secrets`: how a site's `spec.tls.secretName` is resolved (`SecretNames`, to check
        Kubernetes manifests offline); None: a folder of sites reads no Secrets."""
        if max_manifest_bytes < 1:
            raise ValueError(
                f"the limit of bytes per manifest file must be at least 1, got {max_manifest_bytes}"
            )
        self.root = Path(root).absolute()  # watchfiles reports absolute paths
        self.force_polling = force_polling
        self.max_manifest_bytes = max_manifest_bytes
        self.limit = SiteLimit(max_sites)  # the sites served, of `_sites`
        self._first_seen = FirstSeen()  # when each site was first declared, for its seniority
        self._gone: set[SiteKey] = set()  # sites no file declares since the last `current()`
        self._files: dict[Path, _FileState] = {}
        self._folder_problem: Problem | None = None
        # The union of every file's sites, kept up to date file by file:
        self._declared: dict[SiteKey, dict[Path, StaticSite]] = {}  # every declaration of a site
        self._sites: dict[SiteKey, StaticSite] = {}  # the one served: from the first file
        self._changed: set[SiteKey] | None = None  # since the last `current()`; None: unknown
        self._tenancy: Tenancy = OPEN
        self._tenancy_problems: tuple[Problem, ...] = ()  # of the tenancy's declarations
        self._tenancy_changed = False  # a file's tenancy part changed since the last `current()`
        # Certificate and key files (and the files their links lead to) -> the manifests naming them:
        self._certificate_users: dict[Path, set[Path]] = {}
        self._certificate_files = CertificateFiles()
        self._secrets = secrets
        # Manifests naming certificate files outside the folder: no event tells when those
        # change, so the watcher compares them between batches (see `watch`).
        self._outside: set[Path] = set()
        self.state = SourceState("folder", f"the sites folder {self.root}", log)
        self._watch_problem: str | None = None  # why the folder cannot be watched, if it cannot

    # -- reading ---------------------------------------------------------------------------

    def load(self) -> SiteSet:
        """Read every manifest file below the folder (re-reading only files that changed)."""
        try:
            paths = set(self._scan())
            self._folder_problem = None
            self.state.report(None)
        except OSError as exc:
            reason = exc.strerror or str(exc)
            self._folder_problem = Problem(str(self.root), "", f"cannot read the sites folder: {reason}")
            self.state.report(reason)  # logged once, when the folder stops being readable
            return self.current()
        with self._first_seen.together():  # the sites one reading finds are of one age
            for gone in set(self._files) - paths:
                self._forget(gone)
            for path in sorted(paths):
                self._refresh(path)
        return self.current()

    def update(self, paths: Iterable[Path]) -> SiteSet:
        """Re-read the given paths (created, changed or deleted) and return the new set."""
        with self._first_seen.together():  # the sites of one batch of changes are of one age
            for path in sorted(set(paths)):
                if path.exists():
                    self._refresh(path)
                else:
                    self._forget(path)
        return self.current()

    def current(self) -> SiteSet:
        """The union of every file's sites; a site declared twice is kept from the first file.

        The set says which sites changed since the previous call, so a build can look at
        those alone.
        """
        problems: list[Problem] = [self._folder_problem] if self._folder_problem else []
        invalid: dict[SiteKey, tuple[Problem, ...]] = {}
        for path in sorted(p for p, state in self._files.items() if state.problems):
            problems.extend(self._files[path].problems)
            invalid.update(self._files[path].invalid)
        for key in sorted(k for k, where in self._declared.items() if len(where) > 1):
            first, *others = sorted(self._declared[key])
            for path in others:
                problems.append(
                    Problem(
                        self._declared[key][path].origin,
                        "metadata.name",
                        f"site {key} is already declared in {self._declared[key][first].origin}; "
                        "this declaration is ignored",
                    )
                )  # the site served is the first one: it stays valid
        changed = None if self._changed is None else frozenset(self._changed)
        self._changed = set()
        # A site that moved to another file within the batch keeps its age.
        self._first_seen.forget(key for key in self._gone if key not in self._declared)
        self._gone.clear()
        tenancy = self._current_tenancy()
        problems.extend(self._tenancy_problems)
        return self.limit.site_set(problems, invalid, changed, tenancy=tenancy)

    def _current_tenancy(self) -> Tenancy:
        """The tenancy the files declare: the same object as before while it is the same."""
        if not self._tenancy_changed:
            return self._tenancy
        self._tenancy_changed = False
        parts = [(path, self._files[path].tenancy) for path in sorted(self._files)]
        problems: list[Problem] = []
        labels: dict[str, Mapping[str, str]] = {}
        seen: dict[str, Path] = {}
        for path, part in parts:
            problems.extend(part.problems)
            for name, values in part.namespaces.items():
                if name in seen:
                    message = f"namespace {name} is already declared in {self._name(seen[name])}; ignored"
                    problems.append(Problem(self._name(path), "metadata.name", message))
                    continue
                seen[name] = path
                labels[name] = values
        fresh = OPEN
        if any(part.declares_groups for _, part in parts):
            fresh = Tenancy.of(
                [group for _, part in parts for group in part.groups.values()], labels, problems
            )
            problems = list(fresh.problems)
        for problem in problems:
            if problem not in self._tenancy_problems:
                log.error("%s", problem)
        self._tenancy_problems = tuple(problems)
        if fresh == self._tenancy:
            return self._tenancy
        if fresh is OPEN:
            log.info("no GatewayGroup is declared: the default gateway group serves every site")
        else:
            log.info("gateway groups: %s", ", ".join(fresh.names()) or "none (no site is served)")
        self._tenancy = fresh
        return fresh

    def _set_file(self, path: Path, state: _FileState | None) -> None:
        """Record what a file now declares (None: it is gone) and update the union."""
        old = self._files.pop(path, None)
        if state is not None:
            self._files[path] = state
        if (old.tenancy if old else _NO_TENANCY) != (state.tenancy if state else _NO_TENANCY):
            self._tenancy_changed = True
        self._index_certificates(path, old, state)
        touched = set(old.sites if old else ()) | set(state.sites if state else ())
        for key in touched:
            where = self._declared.setdefault(key, {})
            if state is not None and key in state.sites:
                where[path] = state.sites[key]
            else:
                where.pop(path, None)
            served = where[min(where)] if where else None
            if not where:
                del self._declared[key]
                self._gone.add(key)
            if served is not self._sites.get(key):
                if served is None:
                    del self._sites[key]
                else:
                    self._sites[key] = served
                self.limit.offer(key, served)
                if self._changed is not None:
                    self._changed.add(key)

    def _index_certificates(self, path: Path, old: _FileState | None, new: _FileState | None) -> None:
        """Keep the map from certificate files to the manifests naming them up to date."""
        now = new.watched if new is not None else set()
        for watched in old.watched - now if old is not None else ():
            users = self._certificate_users.get(watched)
            if users is not None:
                users.discard(path)
                if not users:
                    del self._certificate_users[watched]
                    self._certificate_files.forget(watched)
        self._outside.discard(path)
        if new is None:
            return
        for watched in now:
            self._certificate_users.setdefault(watched, set()).add(path)
        if any(not _within(watched, self.root) for watched in new.watched):
            self._outside.add(path)

    def _scan(self) -> Iterable[Path]:
        return manifest_files(self.root)

    def _refresh(self, path: Path, *, any_name: bool = False) -> None:
        if not any_name and not is_manifest_path(path, self.root):
            return
        try:
            st = path.stat()
        except OSError:
            self._forget(path)
            return
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        old = self._files.get(path)
        if old is not None and old.stamp == stamp and not _certificates_changed(old):
            return
        self._set_file(path, self._read(path, stamp, old))

    def _forget(self, path: Path) -> None:
        state = self._files.get(path)
        self._set_file(path, None)
        if state is not None and state.sites:
            log.info("%s was removed; its sites are removed: %s", self._name(path), _keys(state.sites))

    def _read(self, path: Path, stamp: tuple[int, int, int], old: _FileState | None) -> _FileState:
        name = self._name(path)
        state = _FileState(stamp)
        previous = old.sites if old is not None else {}
        try:
            docs = read_documents(path, self.max_manifest_bytes)  # within the limits, or refused
        except (OSError, UnicodeDecodeError, yaml.YAMLError, ValueError) as exc:
            problem = Problem(name, "", f"cannot be read: {_describe(exc)}")
            state.problems.append(problem)
            # The whole file is unreadable: every site it declared keeps its last good version.
            state.sites = {key: self._last_good(site, path, state) for key, site in previous.items()}
            for key in previous:
                state.invalid[key] = (problem,)
            log.error("%s%s", problem, _kept(previous))
            if old is not None:  # and its gateway groups and namespaces stay as they were
                state.tenancy = old.tenancy
            return state

        for index, doc in enumerate(docs, start=1):
            origin = f"{name} document {index}" if len(docs) > 1 else name
            if doc is None:
                continue
            if isinstance(doc, dict) and (is_gateway_group(doc) or is_namespace(doc)):
                self._read_tenancy(doc, origin, state.tenancy, old.tenancy if old is not None else None)
                continue
            if not isinstance(doc, dict) or not is_static_site(doc):
                wrong_kind = _kind_problem(doc, origin)
                if wrong_kind is not None:
                    state.problems.append(wrong_kind)
                    log.error("%s", wrong_kind)
                    continue
                kind = doc.get("kind") if isinstance(doc, dict) else None
                log.info("%s: kind %s is not a %s; ignored", origin, describe(kind), "StaticSite")
                continue
            try:
                site = self._with_certificate(parse_site(doc, origin), path, state)
            except InvalidSite as exc:
                state.problems.extend(exc.problems)
                claimed = exc.key or site_key_of(doc)
                kept = previous.get(claimed) if claimed is not None else None
                if claimed is not None:
                    state.invalid[claimed] = tuple(exc.problems)
                    if kept is not None:
                        state.sites[claimed] = kept = self._last_good(kept, path, state)
                for problem in exc.problems:
                    log.error("%s%s", problem, _kept({claimed: kept} if claimed and kept else {}))
                continue
            if site.key in state.sites:
                problem = Problem(origin, "metadata.name", f"site {site.key} is declared twice in this file")
                state.problems.append(problem)
                log.error("%s", problem)
                continue
            state.sites[site.key] = self._first_seen.stamp(site)
        return state

    def _read_tenancy(
        self, doc: dict[str, object], origin: str, part: _TenancyPart, old: _TenancyPart | None
    ) -> None:
        """Read a GatewayGroup or Namespace document into the file's part of the tenancy. A
        GatewayGroup that cannot be read keeps the version this file had, if it had one."""
        try:
            if is_namespace(doc):
                name, labels = parse_namespace(doc, origin)
                if name in part.namespaces:
                    raise InvalidNamespace(
                        Problem(origin, "metadata.name", f"namespace {name} is declared twice in this file")
                    )
                part.namespaces[name] = labels
                return
            part.declares_groups = True
            group = parse_gateway_group(doc, origin)
            if group.name in part.groups:
                message = f"gateway group {group.name} is declared twice in this file"
                raise InvalidGatewayGroup([Problem(origin, "metadata.name", message)])
            part.groups[group.name] = group
        except InvalidNamespace as exc:
            part.problems.append(exc.problem)
        except InvalidGatewayGroup as exc:
            kept = old.groups.get(exc.name) if old is not None and exc.name is not None else None
            if kept is not None and exc.name not in part.groups:
                part.groups[kept.name] = kept
                exc = InvalidGatewayGroup(
                    [
                        *exc.problems,
                        Problem(origin, "", f"the last good version of gateway group {kept.name} stays"),
                    ],
                    exc.name,
                )
            part.problems.extend(exc.problems)

    def _last_good(self, site: StaticSite, manifest: Path, state: _FileState) -> StaticSite:
        """A site's last good version, kept while its declaration is not valid: its certificate
        files are still followed, so a renewal on disk is served; files that cannot be used
        now leave it the certificate it has."""
        if site.tls is None or site.tls.certificate_file is None:
            return site
        try:
            return self._with_certificate(site, manifest, state)
        except InvalidSite:
            return site

    def _with_certificate(self, site: StaticSite, manifest: Path, state: _FileState) -> StaticSite:
        """The site with the certificate its `spec.tls` names; or InvalidSite.

        The certificate files read are recorded in `state`, with how they looked, even when
        they cannot be read: a missing file that appears re-reads the manifest.
        """
        if site.tls is None:
            return site
        files = self._certificate_files.beside(FilesRead(manifest, state.certificates, state.watched))
        certificate = resolved(site, SiteCertificates(files, self._secrets).resolve(site))
        assert not isinstance(certificate, CertificatePending)  # files and names are known at once
        return with_certificate(site, certificate)

    def _classify(self, paths: Iterable[Path]) -> tuple[set[Path], bool]:
        """Split a batch of changed paths: manifest files to re-read, and whether to rescan.

        Hidden files are the temporary files of editors and atomic writes (write, then
        rename over the manifest): the rename shows as a change of the manifest itself, so
        they are ignored, and so is anything inside a hidden folder, which is never read.
        A certificate or key file a site names (or the file a link of one leads to, such as
        `..2024_01_01/tls.crt` in a mounted Secret) re-reads the manifests that name it.
        A link that changed (the `..data` link of a ConfigMap or Secret volume) or a visible
        folder can change many files at once: that takes a rescan, which re-reads every
        manifest whose certificate files changed too.
        """
        manifests: set[Path] = set()
        for path in paths:
            if is_manifest_path(path, self.root):
                manifests.add(path)
                continue
            users = self._certificate_users.get(path)
            if users:
                manifests.update(users)
            if path.is_symlink():
                return manifests, True
            if users or _hidden(path, self.root):
                continue
            if path.is_dir() or (not path.exists() and not path.suffix):
                return manifests, True  # a folder, or perhaps a folder that was removed
        return manifests, False

    def _renewed_outside(self) -> set[Path]:
        """Manifests naming a certificate file outside the folder that changed since it was read.

        The watcher sees no event for a file outside the folder (a certificate in
        /etc/letsencrypt, say, or the target of a link to one), so it compares those files
        between batches; a full load (a rescan) compares every certificate file.
        """
        now: dict[Path, FileStamp | None] = {}  # each file looked at once, however shared

        def changed(path: Path, stamp: FileStamp | None) -> bool:
            if path not in now:
                now[path] = stamp_now(path)
            return now[path] != stamp

        return {
            manifest
            for manifest in self._outside
            if any(changed(path, stamp) for path, stamp in self._files[manifest].certificates.items())
        }

    def _name(self, path: Path) -> str:
        return str(path)

    # -- watching --------------------------------------------------------------------------

    async def watch(self, stop: asyncio.Event | None = None) -> AsyncIterator[SiteSet]:
        """Yield the initial set, then a new set after every batch of file changes.

        When the folder itself goes away, is replaced (by a file or another folder) or cannot
        be read, the last good sites stay; the folder is checked every second until it can be
        read, and then watched afresh, so it recovers without a restart.

        A certificate or key file that changes re-reads the manifests naming it (see
        `_classify` and `_renewed_outside`).
        """
        import watchfiles

        last = self.load()
        yield last
        while True:
            folder = _identity(self.root)
            try:
                watching = False
                batches = watchfiles.awatch(
                    self.root,
                    stop_event=stop,
                    step=5,
                    debounce=400,
                    rust_timeout=_WATCH_TIMEOUT_MS,
                    yield_on_timeout=True,
                    force_polling=self.force_polling,
                    poll_delay_ms=200,
                    recursive=True,
                    ignore_permission_denied=True,
                )
                async with contextlib.aclosing(batches):
                    async for batch in batches:
                        if not watching:
                            # The watcher is in place only now: a change made since the last load
                            # (while the consumer handled it) made no event, so compare every file.
                            watching = True
                            if self._watch_problem is not None:
                                log.info("watching %s again", self.root)
                                self._watch_problem = None
                            fresh = self.load()
                            if batch or _news(fresh, last):
                                last = fresh
                                yield fresh
                            if self._folder_problem is not None:
                                break
                            continue
                        renewed = self._renewed_outside()  # certificates outside the folder
                        if not batch:  # a timeout: nothing changed, unless the folder itself did
                            if _identity(self.root) != folder:
                                break  # moved away, removed or replaced: it makes no event here
                            if renewed:
                                last = self.update(renewed)
                                yield last
                            continue
                        manifests, rescan = self._classify(Path(p) for _, p in batch)
                        manifests |= renewed
                        if rescan:  # a folder or a link changed (a ConfigMap swap, say)
                            last = self.load()
                            yield last
                            if self._folder_problem is not None:
                                break
                        elif manifests:
                            last = self.update(manifests)
                            yield last
                    else:
                        return  # stopped
            except (RuntimeError, OSError) as exc:
                if stop is not None and stop.is_set():
                    return
                if self._watch_problem != str(exc):  # once per cause, not every second
                    log.error("cannot watch %s (%s); keeping the last good sites, retrying", self.root, exc)
                self._watch_problem = str(exc)
                if await _stopped(stop, _RECHECK_SECONDS):
                    return
            # The folder is gone, replaced or unreadable: read it again every second until it
            # can be read (the source's state logs the outage once), then watch it afresh.
            while True:
                fresh = self.load()
                if _news(fresh, last):
                    last = fresh
                    yield fresh
                if self._folder_problem is None:
                    break
                if await _stopped(stop, _RECHECK_SECONDS):
                    return


def read_manifests(paths: Iterable[Path], *, secrets: CertificateResolver | None = None) -> SiteSet:
    """Read manifest files, and every manifest file below folders, once (no watching).

    `secrets`: how Kubernetes manifests' TLS Secrets are resolved (see `FolderSource`).
    """
    source = FolderSource(Path("."), secrets=secrets)
    for path in paths:
        if path.is_dir():
            try:
                found = sorted(manifest_files(path))
            except OSError as exc:
                problem = Problem(str(path), "", f"cannot be read: {_describe(exc)}")
                source._set_file(path, _FileState((0, 0, 0), problems=[problem]))
                continue
            for file in found:
                source._refresh(file, any_name=True)
        elif path.exists():
            source._refresh(path, any_name=True)
        else:
            source._set_file(path, _FileState((0, 0, 0), problems=[Problem(str(path), "", "no such file")]))
    return source.current()


def manifest_files(root: Path) -> Iterable[Path]:
    """Every manifest file below `root`, skipping hidden files and folders."""
    if not root.is_dir():
        raise NotADirectoryError(20, "not a directory", str(root))

    def unreadable(exc: OSError) -> None:
        # os.walk skips a folder it cannot list: a root that cannot be listed would look empty,
        # and every site would be removed. (Subfolders it cannot list are skipped, like
        # lost+found on a volume.)
        if exc.filename == str(root):
            raise exc

    for folder, dirs, files in os.walk(root, onerror=unreadable, followlinks=True):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in files:
            if is_manifest_name(name):
                yield Path(folder, name)


def is_manifest_name(name: str) -> bool:
    return not name.startswith(".") and name.endswith(MANIFEST_SUFFIXES)


def is_manifest_path(path: Path, root: Path) -> bool:
    try:
        parts = path.relative_to(root).parts
    except ValueError:
        return False
    return bool(parts) and not any(p.startswith(".") for p in parts) and is_manifest_name(parts[-1])


def _news(fresh: SiteSet, last: SiteSet) -> bool:
    """Whether a set read again says anything the last one yielded did not."""
    return (
        fresh.changed is None
        or bool(fresh.changed)
        or fresh.problems != last.problems
        or fresh.tenancy is not last.tenancy
    )


_NO_TENANCY = _TenancyPart()


def _identity(path: Path) -> tuple[int, int] | None:
    """Which folder `path` names now (device and inode); None if it names no folder."""
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_dev, st.st_ino) if stat.S_ISDIR(st.st_mode) else None


async def _stopped(stop: asyncio.Event | None, seconds: float) -> bool:
    """Wait `seconds`, or until `stop` is set; True if it is."""
    if stop is None:
        await asyncio.sleep(seconds)
        return False
    try:
        await asyncio.wait_for(stop.wait(), timeout=seconds)
    except TimeoutError:
        return False
    return True


def _certificates_changed(state: _FileState) -> bool:
    return any(stamp_now(path) != stamp for path, stamp in state.certificates.items())


def _within(path: Path, root: Path) -> bool:
    try:
        path.relative_to(root)
    except ValueError:
        return False
    return True


def _hidden(path: Path, root: Path) -> bool:
    try:
        return any(part.startswith(".") for part in path.relative_to(root).parts)
    except ValueError:
        return True


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    return " ".join(str(exc).replace(' in "<unicode string>",', " at").split())


def _keys(sites: Iterable[SiteKey]) -> str:
    return ", ".join(str(k) for k in sorted(sites))


def _kept(sites: Mapping[SiteKey, StaticSite]) -> str:
    return f" (keeping the last good version of {_keys(sites)})" if sites else ""


_OUR_KINDS = (KIND, GATEWAY_GROUP_KIND)


def _kind_problem(doc: object, origin: str) -> Problem | None:
    """Why a document that is none of ours is still a mistake: it is no mapping at all (plain
    text), or it names our API group or a near miss of one of our kinds (`Staticsite`).
    A document of another kind altogether (a ConfigMap) is not: it is skipped."""
    if not isinstance(doc, dict):
        return Problem(
            origin,
            "",
            f"is not a manifest: expected a mapping with apiVersion and kind, got {type_name(doc)}",
        )
    kind = doc.get("kind")
    api_version = doc.get("apiVersion")
    ours = isinstance(api_version, str) and api_version.startswith(f"{GROUP}/")
    if isinstance(kind, str):
        close = difflib.get_close_matches(kind, _OUR_KINDS, n=1, cutoff=0.75)
        folded = [k for k in _OUR_KINDS if k.lower() == kind.lower()]
        meant = folded or close
        if meant:
            return Problem(
                origin, "kind", f"must be {meant[0]!r} (kinds are case-sensitive), got {describe(kind)}"
            )
    if ours:
        listed = ", ".join(repr(k) for k in _OUR_KINDS)
        return Problem(origin, "kind", f"{api_version} has the kinds {listed}, got {describe(kind)}")
    return None
