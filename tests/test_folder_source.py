"""FolderSource: reading a folder of manifests, keeping the last good sites, and watching it."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from support.manifests import manifest, write

from snapshot.model import API_VERSION, Backend, SiteKey
from snapshot.tenancy import OPEN
from watcher.folder import FolderSource, read_manifests
from watcher.siteset import SiteSet

pytestmark = pytest.mark.unit

GATEWAY_GROUP = (
    "apiVersion: staticsite-xds.dev/v1alpha1\nkind: GatewayGroup\nmetadata: {name: default}\n"
    "spec: {grants: [{namespaces: {selector: {}}, domains: ['*']}]}\n"
)
CONFIG_MAP = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: settings}\ndata: {a: b}\n"


def docs(*texts: str) -> str:
    return "---\n".join(texts)


def domains(sites: SiteSet) -> dict[str, str]:
    """name -> domain, for every site of the default namespace (and namespace/name otherwise)."""
    return {
        (k.name if k.namespace == "default" else str(k)): s.domain for k, s in sorted(sites.sites.items())
    }


def key(name: str, namespace: str = "default") -> SiteKey:
    return SiteKey(namespace, name)


# -- reading ----------------------------------------------------------------------------------


def test_several_documents_per_file(root: Path) -> None:
    path = write(
        root / "all.yaml",
        docs(
            manifest("a", "a.example.com", "web", 80),
            manifest("b", "b.example.com", "web", 81),
            manifest("c", "c.example.com", "api", 80, namespace="team"),
        ),
    )
    sites = FolderSource(root).load()
    assert domains(sites) == {"a": "a.example.com", "b": "b.example.com", "team/c": "c.example.com"}
    assert sites.problems == ()
    assert dict(sites.invalid) == {}
    assert sites.sites[key("b")].origin == f"{path} document 2"
    assert sites.sites[key("c", "team")].backend == Backend("team", "api", 80)


def test_single_document_origin_is_the_file(root: Path) -> None:
    path = write(root / "a.yaml", manifest("a", "a.example.com", "web", 80))
    assert FolderSource(root).load().sites[key("a")].origin == str(path)


def test_non_static_site_documents_are_ignored(root: Path) -> None:
    write(
        root / "mixed.yaml",
        docs(CONFIG_MAP, manifest("a", "a.example.com", "web", 80), "just a string\n", "", "- a list\n"),
    )
    write(root / "configmap.yaml", CONFIG_MAP)
    write(root / "empty.yaml", "")
    sites = FolderSource(root).load()
    assert domains(sites) == {"a": "a.example.com"}
    # Documents of another kind are skipped; a document that is no manifest at all is a problem.
    assert [(p.origin.rsplit("/", 1)[-1], p.message.split(":")[0]) for p in sites.problems] == [
        ("mixed.yaml document 3", "is not a manifest"),
        ("mixed.yaml document 5", "is not a manifest"),
    ]


def test_hidden_files_and_folders_and_other_names_are_skipped(root: Path) -> None:
    write(root / "visible.yaml", manifest("visible", "visible.example.com", "web", 80))
    write(root / ".hidden.yaml", manifest("hidden", "hidden.example.com", "web", 80))
    write(root / ".git" / "x.yaml", manifest("git", "git.example.com", "web", 80))
    write(root / "..data" / "y.yaml", manifest("data", "data.example.com", "web", 80))
    write(root / "team" / ".secret" / "z.yaml", manifest("secret", "secret.example.com", "web", 80))
    write(root / "team" / ".z.yml", manifest("dotfile", "dotfile.example.com", "web", 80))
    write(root / "notes.txt", manifest("txt", "txt.example.com", "web", 80))
    write(root / "backup.yaml~", manifest("backup", "backup.example.com", "web", 80))
    write(root / "README", "not yaml: [")
    sites = FolderSource(root).load()
    assert domains(sites) == {"visible": "visible.example.com"}
    assert sites.problems == ()


def test_yaml_yml_and_json_are_read(root: Path) -> None:
    write(root / "a.yaml", manifest("a", "a.example.com", "web", 80))
    write(root / "b.yml", manifest("b", "b.example.com", "web", 80))
    doc = {
        "apiVersion": API_VERSION,
        "kind": "StaticSite",
        "metadata": {"name": "c"},
        "spec": {"domain": "c.example.com", "backend": {"serviceName": "web", "servicePort": 80}},
    }
    write(root / "c.json", json.dumps(doc, indent=2))
    sites = FolderSource(root).load()
    assert domains(sites) == {"a": "a.example.com", "b": "b.example.com", "c": "c.example.com"}


def test_subfolders_are_read(root: Path) -> None:
    write(root / "top.yaml", manifest("top", "top.example.com", "web", 80))
    write(root / "team" / "one.yaml", manifest("one", "one.example.com", "web", 80))
    write(root / "team" / "deep" / "er" / "two.yml", manifest("two", "two.example.com", "web", 80))
    sites = FolderSource(root).load()
    assert domains(sites) == {"one": "one.example.com", "top": "top.example.com", "two": "two.example.com"}


def test_invalid_document_is_reported_and_the_others_are_kept(root: Path) -> None:
    path = write(
        root / "sites.yaml",
        docs(
            manifest("a", "a.example.com", "web", 80),
            manifest("b", "b.example.com", "web", 0),
            manifest("c", "c.example.com", "web", 80),
        ),
    )
    write(root / "other.yaml", manifest("d", "d.example.com", "web", 80))
    sites = FolderSource(root).load()
    assert domains(sites) == {"a": "a.example.com", "c": "c.example.com", "d": "d.example.com"}
    (problem,) = sites.problems
    assert problem.origin == f"{path} document 2"
    assert problem.field == "spec.backend.servicePort"
    assert str(problem).startswith(f"{path} document 2: spec.backend.servicePort: ")
    assert set(sites.invalid) == {key("b")}
    assert sites.invalid[key("b")] == (problem,)


def test_invalid_document_without_a_name_is_reported(root: Path) -> None:
    path = write(
        root / "a.yaml",
        f"apiVersion: {API_VERSION}\nkind: StaticSite\nmetadata: {{}}\n"
        "spec: {domain: a.example.com, backend: {serviceName: web, servicePort: 80}}\n",
    )
    sites = FolderSource(root).load()
    assert not sites.sites
    assert [(p.origin, p.field) for p in sites.problems] == [(str(path), "metadata.name")]


def test_site_that_becomes_invalid_keeps_its_last_good_version(root: Path) -> None:
    source = FolderSource(root)
    path = write(
        root / "a.yaml",
        docs(manifest("a", "a.example.com", "web", 80), manifest("b", "b.example.com", "web", 80)),
    )
    good = source.load()
    write(
        path, docs(manifest("a", "a_bad.example.com", "web", 80), manifest("b", "b.example.com", "web", 8080))
    )
    sites = source.load()
    assert sites.sites[key("a")] == good.sites[key("a")]  # the last good version
    assert sites.sites[key("b")].backend.service_port == 8080  # the valid change is taken
    assert set(sites.invalid) == {key("a")}
    assert [(p.origin, p.field) for p in sites.problems] == [(f"{path} document 1", "spec.domain")]

    write(path, docs(manifest("a", "a2.example.com", "web", 80), manifest("b", "b.example.com", "web", 8080)))
    fixed = source.load()
    assert domains(fixed) == {"a": "a2.example.com", "b": "b.example.com"}
    assert fixed.problems == ()
    assert dict(fixed.invalid) == {}


def test_file_with_a_yaml_syntax_error_keeps_its_sites(root: Path) -> None:
    source = FolderSource(root)
    path = write(
        root / "a.yaml",
        docs(manifest("a", "a.example.com", "web", 80), manifest("b", "b.example.com", "web", 80)),
    )
    write(root / "c.yaml", manifest("c", "c.example.com", "web", 80))
    good = source.load()
    write(path, "apiVersion: [unclosed\nkind: StaticSite\n")
    sites = source.load()
    assert dict(sites.sites) == dict(good.sites)
    assert set(sites.invalid) == {key("a"), key("b")}
    (problem,) = sites.problems
    assert problem.origin == str(path)
    assert problem.field == ""
    assert "cannot be read" in problem.message
    assert "line" in problem.message


def test_new_site_that_is_invalid_is_not_served(root: Path) -> None:
    source = FolderSource(root)
    write(root / "a.yaml", manifest("a", "a.example.com", "web", 80))
    source.load()
    write(root / "b.yaml", manifest("b", "b.example.com", "Web", 80))
    sites = source.load()
    assert domains(sites) == {"a": "a.example.com"}
    assert set(sites.invalid) == {key("b")}


def test_deleting_a_file_removes_its_sites(root: Path) -> None:
    source = FolderSource(root)
    path = write(
        root / "a.yaml",
        docs(manifest("a", "a.example.com", "web", 80), manifest("b", "b.example.com", "web", 80)),
    )
    write(root / "c.yaml", manifest("c", "c.example.com", "web", 80))
    assert set(domains(source.load())) == {"a", "b", "c"}
    path.unlink()
    assert domains(source.load()) == {"c": "c.example.com"}


def test_deleting_an_invalid_file_removes_its_kept_sites_and_problems(root: Path) -> None:
    source = FolderSource(root)
    path = write(root / "a.yaml", manifest("a", "a.example.com", "web", 80))
    source.load()
    write(path, "{{{")
    assert set(source.load().invalid) == {key("a")}
    path.unlink()
    sites = source.load()
    assert not sites.sites
    assert sites.problems == ()
    assert dict(sites.invalid) == {}


def test_the_same_site_in_two_files_is_kept_from_the_first(root: Path) -> None:
    source = FolderSource(root)
    first = write(root / "a.yaml", manifest("blog", "first.example.com", "web", 80))
    second = write(root / "b.yaml", manifest("blog", "second.example.com", "web", 80))
    sites = source.load()
    assert domains(sites) == {"blog": "first.example.com"}
    assert sites.sites[key("blog")].origin == str(first)
    (problem,) = sites.problems
    assert problem.origin == str(second)
    assert problem.field == "metadata.name"
    assert str(first) in problem.message
    first.unlink()
    sites = source.load()
    assert domains(sites) == {"blog": "second.example.com"}
    assert sites.problems == ()


def test_update_rereads_only_the_given_paths(root: Path) -> None:
    source = FolderSource(root)
    a = write(root / "a.yaml", manifest("a", "a.example.com", "web", 80))
    b = write(root / "b.yaml", manifest("b", "b.example.com", "web", 80))
    source.load()
    write(a, manifest("a", "a2.example.com", "web", 80))
    write(b, manifest("b", "b2.example.com", "web", 80))
    c = write(root / "c.yaml", manifest("c", "c.example.com", "web", 80))
    assert domains(source.update([a])) == {"a": "a2.example.com", "b": "b.example.com"}
    assert domains(source.update([b, c])) == {
        "a": "a2.example.com",
        "b": "b2.example.com",
        "c": "c.example.com",
    }
    a.unlink()
    assert set(domains(source.update([a]))) == {"b", "c"}


def test_update_ignores_paths_that_are_not_manifests(root: Path, tmp_path: Path) -> None:
    source = FolderSource(root)
    source.load()
    hidden = write(root / ".a.yaml", manifest("a", "a.example.com", "web", 80))
    text = write(root / "a.txt", manifest("b", "b.example.com", "web", 80))
    outside = write(tmp_path / "outside.yaml", manifest("c", "c.example.com", "web", 80))
    assert not source.update([hidden, text, outside]).sites


def test_unchanged_files_are_not_read_again(root: Path) -> None:
    source = FolderSource(root)
    write(root / "a.yaml", manifest("a", "a.example.com", "web", 80))
    b = write(root / "b.yaml", manifest("b", "b.example.com", "web", 80))
    first = source.load()
    write(b, manifest("b", "b.example.com", "web", 8080))
    second = source.load()
    assert second.sites[key("a")] is first.sites[key("a")]
    assert second.sites[key("b")].backend.service_port == 8080


def test_missing_folder_after_a_load_keeps_the_last_good_sites(root: Path, tmp_path: Path) -> None:
    source = FolderSource(root)
    write(root / "a.yaml", manifest("a", "a.example.com", "web", 80))
    good = source.load()
    moved = tmp_path / "moved"
    root.rename(moved)
    sites = source.load()
    assert dict(sites.sites) == dict(good.sites)
    (problem,) = sites.problems
    assert problem.origin == str(root)
    assert "cannot read the sites folder" in problem.message
    moved.rename(root)
    back = source.load()
    assert dict(back.sites) == dict(good.sites)
    assert back.problems == ()


def test_folder_replaced_by_a_file_keeps_the_last_good_sites(root: Path) -> None:
    source = FolderSource(root)
    write(root / "a.yaml", manifest("a", "a.example.com", "web", 80))
    good = source.load()
    shutil.rmtree(root)
    root.write_text("not a folder")
    sites = source.load()
    assert dict(sites.sites) == dict(good.sites)
    assert [p.origin for p in sites.problems] == [str(root)]


def test_missing_folder_from_the_start_is_a_problem(tmp_path: Path) -> None:
    sites = FolderSource(tmp_path / "nowhere").load()
    assert not sites.sites
    assert [p.origin for p in sites.problems] == [str(tmp_path / "nowhere")]


@pytest.fixture
def unreadable(monkeypatch: pytest.MonkeyPatch) -> Callable[[Path], None]:
    """Make listing a folder fail with EACCES, as `chmod 000` does for anyone but root."""
    blocked: set[str] = set()
    real_scandir = os.scandir

    def scandir(path: Any = ".") -> Any:
        if os.fspath(path) in blocked:
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    return lambda folder: blocked.add(str(folder))


def test_unreadable_folder_after_a_load_keeps_the_last_good_sites(
    root: Path, unreadable: Callable[[Path], None]
) -> None:
    source = FolderSource(root)
    write(root / "a.yaml", manifest("a", "a.example.com", "web", 80))
    good = source.load()
    unreadable(root)
    sites = source.load()
    assert dict(sites.sites) == dict(good.sites)
    (problem,) = sites.problems
    assert problem.origin == str(root)
    assert "Permission denied" in problem.message


def test_unreadable_subfolder_does_not_hide_the_other_sites(
    root: Path, unreadable: Callable[[Path], None]
) -> None:
    # Like lost+found at the root of a volume: skipped, as the watcher skips it.
    write(root / "a.yaml", manifest("a", "a.example.com", "web", 80))
    write(root / "lost+found" / "b.yaml", manifest("b", "b.example.com", "web", 80))
    unreadable(root / "lost+found")
    sites = FolderSource(root).load()
    assert domains(sites) == {"a": "a.example.com"}
    assert sites.problems == ()


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every folder whatever its mode")
def test_chmod_000_folder_keeps_the_last_good_sites(root: Path) -> None:
    source = FolderSource(root)
    write(root / "a.yaml", manifest("a", "a.example.com", "web", 80))
    good = source.load()
    root.chmod(0)
    try:
        sites = source.load()
    finally:
        root.chmod(0o755)
    assert dict(sites.sites) == dict(good.sites)
    assert len(sites.problems) == 1


def test_read_manifests_reads_files_and_folders(root: Path, tmp_path: Path) -> None:
    a = write(tmp_path / "a.txt", manifest("a", "a.example.com", "web", 80))  # named explicitly: read
    write(root / "b.yaml", manifest("b", "b.example.com", "web", 80))
    write(root / ".c.yaml", manifest("c", "c.example.com", "web", 80))
    missing = tmp_path / "missing.yaml"
    sites = read_manifests([a, root, missing])
    assert domains(sites) == {"a": "a.example.com", "b": "b.example.com"}
    assert [(p.origin, p.message) for p in sites.problems] == [(str(missing), "no such file")]


def test_read_manifests_reports_an_unreadable_folder(root: Path, unreadable: Callable[[Path], None]) -> None:
    write(root / "b.yaml", manifest("b", "b.example.com", "web", 80))
    unreadable(root)
    sites = read_manifests([root])
    assert not sites.sites
    (problem,) = sites.problems
    assert problem.origin == str(root)
    assert "Permission denied" in problem.message


# -- watching ---------------------------------------------------------------------------------


async def next_set(
    changes: AsyncIterator[SiteSet], want: Callable[[SiteSet], bool], seconds: float = 2.0
) -> SiteSet:
    """The first set that `want` accepts, within `seconds` (a change may take two batches)."""

    async def scan() -> SiteSet:
        while True:
            sites = await changes.__anext__()
            if want(sites):
                return sites

    return await asyncio.wait_for(scan(), seconds)


@pytest.fixture
def stop() -> Iterator[asyncio.Event]:
    event = asyncio.Event()
    yield event
    event.set()


async def test_watch_follows_create_change_rename_delete(root: Path, stop: asyncio.Event) -> None:
    source = FolderSource(root)
    changes = source.watch(stop)
    first = await asyncio.wait_for(changes.__anext__(), 2.0)
    assert not first.sites

    path = write(root / "blog.yaml", manifest("blog", "blog.example.com", "web", 80))
    sites = await next_set(changes, lambda s: bool(s.sites))
    assert domains(sites) == {"blog": "blog.example.com"}

    write(path, manifest("blog", "blog2.example.com", "web", 80))
    sites = await next_set(changes, lambda s: domains(s) != {"blog": "blog.example.com"})
    assert domains(sites) == {"blog": "blog2.example.com"}

    renamed = root / "renamed.yml"
    path.rename(renamed)
    sites = await next_set(
        changes, lambda s: key("blog") in s.sites and s.sites[key("blog")].origin == str(renamed)
    )
    assert domains(sites) == {"blog": "blog2.example.com"}

    renamed.unlink()
    sites = await next_set(changes, lambda s: not s.sites)
    assert sites.problems == ()

    stop.set()
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(changes.__anext__(), 2.0)


def test_kubectl_list_documents_are_unfolded(root: Path) -> None:
    items = [
        {
            "apiVersion": API_VERSION,
            "kind": "StaticSite",
            "metadata": {"name": name, "namespace": "docs"},
            "spec": {"domain": f"{name}.example.test", "backend": {"serviceName": "web", "servicePort": 80}},
        }
        for name in ("one", "two")
    ]
    write(root / "exported.yaml", json.dumps({"apiVersion": "v1", "kind": "List", "items": items}))
    sites = FolderSource(root).load()
    assert domains(sites) == {"docs/one": "one.example.test", "docs/two": "two.example.test"}
    assert sites.problems == ()


def test_site_sets_name_the_sites_that_changed(root: Path) -> None:
    source = FolderSource(root)
    write(root / "a.yaml", manifest("a", "a.example.test", "web", 80))
    write(root / "b.yaml", manifest("b", "b.example.test", "web", 80))
    first = source.load()
    assert first.changed is None  # the first set: everything is new
    assert source.current().changed == frozenset()

    write(root / "a.yaml", manifest("a", "a2.example.test", "web", 80))
    assert source.update([root / "a.yaml"]).changed == {key("a")}
    (root / "b.yaml").unlink()
    assert source.update([root / "b.yaml"]).changed == {key("b")}
    # A second declaration of a site changes nothing served; removing the first does.
    write(root / "z.yaml", manifest("a", "zzz.example.test", "web", 80))
    assert source.update([root / "z.yaml"]).changed == frozenset()
    (root / "a.yaml").unlink()
    after = source.update([root / "a.yaml"])
    assert after.changed == {key("a")}
    assert after.sites[key("a")].domain == "zzz.example.test"


async def test_atomic_writes_reread_only_the_manifest(root: Path) -> None:
    """Editors and tools write a hidden temporary file and rename it over the manifest."""
    for i in range(30):
        write(root / f"s{i}.yaml", manifest(f"s{i}", f"s{i}.example.test", "web", 80))
    source = FolderSource(root)
    stop = asyncio.Event()
    sites = source.watch(stop)
    assert len((await asyncio.wait_for(sites.__anext__(), 5)).sites) == 30
    rescans = 0
    load = source.load

    def counting_load() -> SiteSet:
        nonlocal rescans
        rescans += 1
        return load()

    source.load = counting_load  # type: ignore[method-assign]
    try:
        tmp = root / ".s1.yaml.tmp"
        tmp.write_text(manifest("s1", "renamed.example.test", "web", 80))
        os.replace(tmp, root / "s1.yaml")
        # The first batch may be the watcher settling in (one load); wait for the change.
        deadline = asyncio.get_running_loop().time() + 5
        while True:
            got = await asyncio.wait_for(sites.__anext__(), 5)
            if got.sites[key("s1")].domain == "renamed.example.test":
                break
            assert asyncio.get_running_loop().time() < deadline
        assert got.changed == {key("s1")}
        assert rescans <= 1  # at most the watcher's settling load, never one per change
        before = rescans
        for i in range(3):
            tmp = root / f".s2.yaml.{i}"
            tmp.write_text(manifest("s2", f"v{i}.example.test", "web", 80))
            os.replace(tmp, root / "s2.yaml")
            got = await asyncio.wait_for(sites.__anext__(), 5)
            while got.sites[key("s2")].domain != f"v{i}.example.test":
                got = await asyncio.wait_for(sites.__anext__(), 5)
        assert rescans == before
    finally:
        stop.set()
        await sites.aclose()


async def test_a_changed_gateway_group_file_yields_a_new_set(root: Path, stop: asyncio.Event) -> None:
    source = FolderSource(root)
    changes = source.watch(stop)
    first = await asyncio.wait_for(changes.__anext__(), 2.0)
    assert first.tenancy is OPEN
    write(root / "groups.yaml", GATEWAY_GROUP)

    async def enforced() -> None:
        while not (await changes.__anext__()).tenancy.enforced:
            pass

    await asyncio.wait_for(enforced(), 3.0)
    stop.set()


# -- age: which of two sites on one domain is the older -----------------------------------------


def _winner(sites: SiteSet, domain: str) -> str:
    from snapshot.builder import SnapshotBuilder

    result = SnapshotBuilder().build(sites.sites)
    (holder,) = [
        key.name
        for key, state in result.sites.items()
        if state.phase.value == "Provisioned" and sites.sites[key].domain == domain
    ]
    return holder


def test_a_site_declared_later_never_takes_a_domain_an_earlier_one_has(root: Path) -> None:
    write(root / "z.yaml", manifest("zeta", "docs.example.test", "svc-z", 80))
    source = FolderSource(root)
    assert _winner(source.load(), "docs.example.test") == "zeta"
    # A newer site, first by name, on the same domain: the one that had it keeps it.
    write(root / "a.yaml", manifest("alpha", "docs.example.test", "svc-a", 80))
    assert _winner(source.update([root / "a.yaml"]), "docs.example.test") == "zeta"
    # An edit of the holder keeps its age; so does a move to another file in one batch.
    write(root / "z.yaml", manifest("zeta", "docs.example.test", "svc-z2", 80))
    assert _winner(source.update([root / "z.yaml"]), "docs.example.test") == "zeta"
    (root / "z.yaml").rename(root / "b.yaml")
    assert _winner(source.update([root / "z.yaml", root / "b.yaml"]), "docs.example.test") == "zeta"
    # Gone, and declared again: it is the younger now.
    (root / "b.yaml").unlink()
    assert _winner(source.update([root / "b.yaml"]), "docs.example.test") == "alpha"
    write(root / "z.yaml", manifest("zeta", "docs.example.test", "svc-z", 80))
    assert _winner(source.update([root / "z.yaml"]), "docs.example.test") == "alpha"


def test_the_sites_of_one_reading_are_of_one_age_ordered_by_name(root: Path) -> None:
    write(root / "z.yaml", manifest("zeta", "docs.example.test", "svc-z", 80))
    write(root / "a.yaml", manifest("alpha", "docs.example.test", "svc-a", 80))
    source = FolderSource(root)
    sites = source.load()
    assert sites.sites[key("zeta")].first_seen == sites.sites[key("alpha")].first_seen is not None
    assert _winner(sites, "docs.example.test") == "alpha"
    # Two files of one batch of changes, too.
    write(root / "y.yaml", manifest("yank", "api.example.test", "svc-y", 80))
    write(root / "b.yaml", manifest("beta", "api.example.test", "svc-b", 80))
    sites = source.update([root / "y.yaml", root / "b.yaml"])
    assert sites.sites[key("yank")].first_seen == sites.sites[key("beta")].first_seen
    assert sites.sites[key("beta")].first_seen > sites.sites[key("alpha")].first_seen  # type: ignore[operator]
    assert _winner(sites, "api.example.test") == "beta"
