"""FolderSource and HTTPS sites: certificate and key files named by manifests, read and renewed."""

from __future__ import annotations

import asyncio
import errno
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trustme
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2
from support.manifests import manifest, write
from support.waiting import eventually

from snapshot import resources
from snapshot.certificates import MAX_PEM_BYTES, load_certificate
from snapshot.model import NamedCertificate, SiteKey
from watcher.folder import FolderSource, read_manifests
from watcher.site_certificates import SecretNames
from watcher.siteset import SiteSet

pytestmark = pytest.mark.unit

SITE = SiteKey("default", "secure")
CA = trustme.CA()


class Pair:
    """A certificate chain and its key, as PEM bytes."""

    def __init__(self, *hosts: str) -> None:
        cert = CA.issue_cert(*hosts)
        self.chain = b"".join(pem.bytes() for pem in cert.cert_chain_pems)
        self.key = cert.private_key_pem.bytes()

    def write(self, chain: Path, key: Path) -> None:
        chain.parent.mkdir(parents=True, exist_ok=True)
        key.parent.mkdir(parents=True, exist_ok=True)
        chain.write_bytes(self.chain)
        key.write_bytes(self.key)


# Two pairs of different sizes: a file rewritten in place always looks changed on disk.
FIRST = Pair("secure.example.test")
RENEWED = Pair("renewed.secure.example.test")


def tls_manifest(
    certificate: str | Path = "tls.crt", key: str | Path = "tls.key", name: str = "secure"
) -> str:
    return manifest(name, f"{name}.example.test", "web", 80) + (
        f"  tls: {{certificateFile: '{certificate}', keyFile: '{key}'}}\n"
    )


def replace(path: Path, data: bytes) -> None:
    """Write a file atomically: a temporary file renamed over it."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


# -- reading ----------------------------------------------------------------------------------


def test_a_site_is_served_with_the_certificate_its_files_hold(root: Path) -> None:
    FIRST.write(root / "certs" / "tls.crt", root / "certs" / "tls.key")
    (root / "team").mkdir()
    # Relative to the manifest's folder, and normalized.
    (root / "team" / "secure.yaml").write_text(tls_manifest("../certs/tls.crt", "../certs/./tls.key"))
    sites = FolderSource(root).load()
    assert sites.problems == ()
    site = sites.sites[SITE]
    assert site.certificate is not None
    assert site.certificate.name == f"file/{root / 'certs' / 'tls.crt'}"
    assert site.certificate.chain == FIRST.chain
    assert site.certificate.key == FIRST.key
    assert site.certificate.not_after.endswith("Z")
    assert site.certificate.names == ("secure.example.test",)


def test_a_certificates_names_are_those_of_its_subject_alt_name() -> None:
    pair = Pair("Docs.Example.test", "*.docs.example.test", "docs.example.test.", "10.0.0.1")
    certificate = load_certificate("c", pair.chain, pair.key)
    assert certificate.names == ("*.docs.example.test", "docs.example.test")  # no IP, once each
    assert certificate.covers("api.docs.example.test")


def test_absolute_certificate_paths_are_read(root: Path, tmp_path: Path) -> None:
    outside = tmp_path / "tls"
    FIRST.write(outside / "chain.pem", outside / "key.pem")
    (root / "secure.yaml").write_text(tls_manifest(outside / "chain.pem", outside / "key.pem"))
    site = read_manifests([root]).sites[SITE]
    assert site.certificate is not None
    assert site.certificate.name == f"file/{outside / 'chain.pem'}"


def test_a_missing_key_file_makes_the_declaration_invalid(root: Path) -> None:
    (root / "tls.crt").write_bytes(FIRST.chain)
    path = root / "secure.yaml"
    path.write_text(tls_manifest())
    sites = FolderSource(root).load()
    assert not sites.sites
    [problem] = sites.problems
    assert (problem.origin, problem.field) == (str(path), "spec.tls.keyFile")
    assert str(root / "tls.key") in problem.message
    assert os.strerror(errno.ENOENT) in problem.message
    assert sites.invalid[SITE] == (problem,)


def test_a_certificate_file_too_large_is_refused(root: Path) -> None:
    (root / "tls.crt").write_bytes(b"x" * (MAX_PEM_BYTES + 1))
    (root / "tls.key").write_bytes(FIRST.key)
    (root / "secure.yaml").write_text(tls_manifest())
    [problem] = FolderSource(root).load().problems
    assert problem.field == "spec.tls.certificateFile"
    assert str(root / "tls.crt") in problem.message
    assert str(MAX_PEM_BYTES) in problem.message


def test_a_key_of_another_certificate_is_invalid_and_the_last_good_version_stays(root: Path) -> None:
    FIRST.write(root / "tls.crt", root / "tls.key")
    path = root / "secure.yaml"
    path.write_text(tls_manifest())
    source = FolderSource(root)
    good = source.load().sites[SITE]

    replace(root / "tls.key", RENEWED.key)
    sites = source.load()
    [problem] = sites.problems
    assert (problem.origin, problem.field, problem.reason) == (str(path), "spec.tls", "InvalidCertificate")
    assert str(root / "tls.crt") in problem.message
    assert str(root / "tls.key") in problem.message
    assert "does not belong" in problem.message
    assert sites.sites[SITE] is good  # the last good version, with its certificate
    assert sites.invalid[SITE] == (problem,)

    replace(root / "tls.crt", RENEWED.chain)  # the pair matches again
    sites = source.load()
    assert sites.problems == ()
    assert served_chain(sites) == RENEWED.chain


def test_a_secret_name_is_a_problem_in_a_folder(root: Path) -> None:
    path = root / "secure.yaml"
    path.write_text(
        manifest("secure", "secure.example.test", "web", 80) + "  tls: {secretName: secure-tls}\n"
    )
    sites = FolderSource(root).load()
    assert not sites.sites
    [problem] = sites.problems
    assert (problem.origin, problem.field) == (str(path), "spec.tls.secretName")
    assert "certificateFile and keyFile" in problem.message


def test_load_reads_a_renewed_certificate_though_the_manifest_is_unchanged(root: Path) -> None:
    FIRST.write(root / "tls.crt", root / "tls.key")
    (root / "secure.yaml").write_text(tls_manifest())
    source = FolderSource(root)
    before = source.load().sites[SITE].certificate
    assert before is not None
    assert source.load().changed == frozenset()  # nothing changed: nothing is read again

    RENEWED.write(root / "tls.crt", root / "tls.key")  # written in place
    sites = source.load()
    assert sites.changed == frozenset({SITE})
    after = sites.sites[SITE].certificate
    assert after is not None
    assert after.name == before.name
    assert (after.chain, after.key) == (RENEWED.chain, RENEWED.key)


@pytest.mark.parametrize(
    "broken",
    [
        pytest.param("  requestTimeout: soon\n", id="an invalid field"),
        pytest.param("  domain: [unclosed\n", id="unreadable YAML"),
    ],
)
def test_a_renewal_reaches_the_last_good_version_while_the_manifest_is_broken(
    root: Path, broken: str
) -> None:
    FIRST.write(root / "tls.crt", root / "tls.key")
    path = root / "secure.yaml"
    path.write_text(tls_manifest())
    source = FolderSource(root)
    assert served_chain(source.load()) == FIRST.chain

    path.write_text(tls_manifest() + broken)
    sites = source.load()
    assert sites.problems
    assert SITE in sites.invalid
    assert served_chain(sites) == FIRST.chain

    RENEWED.write(root / "tls.crt", root / "tls.key")  # renewed while the manifest is broken
    sites = source.load()
    assert sites.changed == frozenset({SITE})
    assert served_chain(sites) == RENEWED.chain
    assert SITE in sites.invalid, "the declaration is still broken"
    assert sites.sites[SITE].request_timeout_ms is None, "the last good version, renewed"

    replace(root / "tls.key", FIRST.key)  # a broken pair meanwhile leaves the renewed one served
    sites = source.load()
    assert served_chain(sites) == RENEWED.chain


def test_a_missing_certificate_that_appears_is_read(root: Path) -> None:
    (root / "secure.yaml").write_text(tls_manifest())
    source = FolderSource(root)
    assert not source.load().sites
    FIRST.write(root / "tls.crt", root / "tls.key")
    sites = source.load()
    assert sites.problems == ()
    assert SITE in sites.sites


def test_every_manifest_naming_a_certificate_is_read_again(root: Path) -> None:
    FIRST.write(root / "shared" / "tls.crt", root / "shared" / "tls.key")
    for name in ("one", "two"):
        (root / f"{name}.yaml").write_text(tls_manifest("shared/tls.crt", "shared/tls.key", name=name))
    source = FolderSource(root)
    assert len(source.load().sites) == 2
    replace(root / "shared" / "tls.crt", RENEWED.chain)
    replace(root / "shared" / "tls.key", RENEWED.key)
    sites = source.load()
    assert sites.changed == frozenset({SiteKey("default", "one"), SiteKey("default", "two")})
    assert {s.certificate.chain for s in sites.sites.values() if s.certificate} == {RENEWED.chain}


# -- watching ---------------------------------------------------------------------------------


@pytest.fixture
def stop() -> Iterator[asyncio.Event]:
    event = asyncio.Event()
    yield event
    event.set()


def served_chain(sites: SiteSet) -> bytes | None:
    site = sites.sites.get(SITE)
    return site.certificate.chain if site is not None and site.certificate is not None else None


class Watched:
    """A folder source that counts its full loads (the first, the watcher's settling one, rescans)."""

    def __init__(self, root: Path) -> None:
        self.source = FolderSource(root)
        self.loads = 0
        load = self.source.load

        def counting_load() -> SiteSet:
            self.loads += 1
            return load()

        self.source.load = counting_load  # type: ignore[method-assign]

    async def renewal(self, stop: asyncio.Event, renew: Callable[[], None]) -> str:
        """Watch, renew the certificate, and return its SDS name once the renewal is served.

        The certificate is renewed once the watcher is in place (after its settling load,
        which compares every file), so that the renewal is noticed by the watcher itself.
        """
        sets: asyncio.Queue[SiteSet] = asyncio.Queue()

        async def pump() -> None:
            async for sites in self.source.watch(stop):
                await sets.put(sites)

        task = asyncio.create_task(pump())
        try:
            first = await asyncio.wait_for(sets.get(), 5)
            assert served_chain(first) == FIRST.chain
            before = first.sites[SITE].certificate
            assert before is not None
            await eventually(lambda: self.loads >= 2, 5, "the watcher to be in place")
            renew()

            async def renewed() -> SiteSet:
                while served_chain(sites := await sets.get()) != RENEWED.chain:
                    pass
                return sites

            sites = await asyncio.wait_for(renewed(), 5)
            assert sites.problems == ()
            after = sites.sites[SITE].certificate
            assert after is not None
            assert after.name == before.name
            assert after.key == RENEWED.key
            return after.name
        finally:
            stop.set()
            await asyncio.wait_for(task, 5)


async def test_watch_serves_a_certificate_replaced_by_rename(root: Path, stop: asyncio.Event) -> None:
    FIRST.write(root / "certs" / "tls.pem", root / "certs" / "tls.key")
    (root / "secure.yaml").write_text(tls_manifest("certs/tls.pem", "certs/tls.key"))

    def renew() -> None:
        replace(root / "certs" / "tls.key", RENEWED.key)
        replace(root / "certs" / "tls.pem", RENEWED.chain)

    watched = Watched(root)
    await watched.renewal(stop, renew)
    # The certificate files map to the manifest naming it: no rescan of the whole folder.
    assert watched.loads == 2


async def test_watch_serves_a_certificate_written_in_place_in_a_hidden_folder(
    root: Path, stop: asyncio.Event
) -> None:
    FIRST.write(root / ".tls" / "tls.crt", root / ".tls" / "tls.key")
    (root / "secure.yaml").write_text(tls_manifest(".tls/tls.crt", ".tls/tls.key"))

    def renew() -> None:
        RENEWED.write(root / ".tls" / "tls.crt", root / ".tls" / "tls.key")

    watched = Watched(root)
    await watched.renewal(stop, renew)
    assert watched.loads == 2


async def test_watch_follows_a_secret_volume_whose_links_are_swapped(root: Path, stop: asyncio.Event) -> None:
    """A mounted Secret: tls.crt -> ..data/tls.crt, ..data -> ..<timestamp>, swapped on renewal."""
    certs = root / "certs"
    FIRST.write(certs / "..2024_01_01" / "tls.crt", certs / "..2024_01_01" / "tls.key")
    (certs / "..data").symlink_to("..2024_01_01")
    for name in ("tls.crt", "tls.key"):
        (certs / name).symlink_to(f"..data/{name}")
    (root / "secure.yaml").write_text(tls_manifest("certs/tls.crt", "certs/tls.key"))

    def renew() -> None:
        RENEWED.write(certs / "..2024_02_01" / "tls.crt", certs / "..2024_02_01" / "tls.key")
        (certs / "..data_tmp").symlink_to("..2024_02_01")
        os.replace(certs / "..data_tmp", certs / "..data")
        shutil.rmtree(certs / "..2024_01_01")

    name = await Watched(root).renewal(stop, renew)
    assert name == f"file/{certs / 'tls.crt'}"


async def test_watch_follows_a_certificate_link_re_pointed(root: Path, stop: asyncio.Event) -> None:
    FIRST.write(root / "v1" / "chain.pem", root / "v1" / "key.pem")
    RENEWED.write(root / "v2" / "chain.pem", root / "v2" / "key.pem")
    for name in ("chain.pem", "key.pem"):
        (root / name).symlink_to(f"v1/{name}")
    (root / "secure.yaml").write_text(tls_manifest("chain.pem", "key.pem"))

    def renew() -> None:
        for name in ("key.pem", "chain.pem"):
            (root / f".{name}.new").symlink_to(f"v2/{name}")
            os.replace(root / f".{name}.new", root / name)

    await Watched(root).renewal(stop, renew)


async def test_watch_notices_a_certificate_outside_the_folder(
    root: Path, tmp_path: Path, stop: asyncio.Event
) -> None:
    outside = tmp_path / "letsencrypt"
    FIRST.write(outside / "fullchain.pem", outside / "privkey.pem")
    (root / "secure.yaml").write_text(tls_manifest(outside / "fullchain.pem", outside / "privkey.pem"))

    def renew() -> None:
        RENEWED.write(outside / "fullchain.pem", outside / "privkey.pem")

    await Watched(root).renewal(stop, renew)


def test_a_secret_is_known_by_name_alone_when_manifests_are_checked_offline(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", manifest("a", "a.example.com", "web", 80) + "  tls: {secretName: docs-tls}\n")
    site = read_manifests([tmp_path], secrets=SecretNames()).sites[SiteKey("default", "a")]
    assert isinstance(site.certificate, NamedCertificate)
    assert site.certificate.name == "secret/default/docs-tls"
    assert resources.secret(site.certificate) == secret_pb2.Secret(name="secret/default/docs-tls")
    served = read_manifests([tmp_path])  # a folder of sites reads no Secrets
    assert SiteKey("default", "a") not in served.sites
    assert [p.field for p in served.problems] == ["spec.tls.secretName"]
