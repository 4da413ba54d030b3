"""End to end: malformed and unpullable manifests, served by a fake registry.

Each case first pulls a good image into a store, then pulls the bad one with
the CLI: exit status 1, one line on stderr starting "Error: " (no
traceback), and the store exactly as it was (its files and `images --json`).
"""

from __future__ import annotations

import copy
import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from support.cli import run_cli
from support.fakeregistry import FakeRegistry, sha256_digest
from support.images import (
    MT_DOCKER_MANIFEST,
    MT_OCI_INDEX,
    MT_OCI_MANIFEST,
    ImageInfo,
    LayoutCache,
    random_layer,
)

import imgpull
from imgpull.manifest import MAX_INDEX_DEPTH, MAX_MANIFESTS_PER_PULL

LIMIT = 4 * 1024 * 1024
GOOD = "test/good:v1"
REPO = "test/bad"


def snapshot(root: Path) -> tuple[list[tuple[str, int]], Any]:
    files = sorted(
        (str(p.relative_to(root)), p.stat().st_size)
        for p in root.rglob("*")
        if p.is_file() and not p.name.startswith("imgpull.db")
    )
    names = sorted(str(p.relative_to(root)) for p in root.rglob("*"))
    listed = run_cli("images", "--json", "--root", str(root))
    assert listed.returncode == 0, listed.stderr
    return [*files, *((n, -1) for n in names)], json.loads(listed.stdout)


@pytest.fixture(scope="module")
def good(layout_cache: LayoutCache) -> ImageInfo:
    return layout_cache.get([random_layer(20_000, seed=801)], ref="fake-good")


@pytest.fixture(scope="module")
def fake(good: ImageInfo) -> Iterator[FakeRegistry]:
    with FakeRegistry() as reg:
        repo, tag = GOOD.split(":")
        reg.add_image(repo, tag, good)
        yield reg


@pytest.fixture(scope="module")
def template_root(fake: FakeRegistry, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store after one good pull from the fake registry."""
    root = tmp_path_factory.mktemp("malformed-template") / "root"
    proc = run_cli("pull", fake.ref(GOOD), "--root", str(root))
    assert proc.returncode == 0, proc.stderr
    return root


def _manifest(good: ImageInfo, **changes: Any) -> dict[str, Any]:
    body = copy.deepcopy(good.manifest)
    for key, value in changes.items():
        if value is None:
            body.pop(key, None)
        else:
            body[key] = value
    return body


def _config(good: ImageInfo, **changes: Any) -> dict[str, Any]:
    config = dict(good.manifest["config"], **changes)
    return {k: v for k, v in config.items() if v is not None}


def _padded(good: ImageInfo, size: int) -> bytes:
    raw = good.blob(good.manifest_digest)
    return raw[:-1] + b" " * (size - len(raw)) + raw[-1:]


# Each case puts something on the fake registry and returns the reference to
# pull (relative to the registry) and words the error must contain.
Case = Callable[[FakeRegistry, ImageInfo], tuple[str, str]]


def _serve(tag: str, body: bytes | dict[str, Any], media_type: str, words: str, **kw: Any) -> Case:
    def case(fake: FakeRegistry, good: ImageInfo) -> tuple[str, str]:
        fake.add_manifest(REPO, tag, body, media_type, **kw)
        return f"{REPO}:{tag}", words

    return case


def _plugin(tag: str, media_type: str, words: str) -> Case:
    def case(fake: FakeRegistry, good: ImageInfo) -> tuple[str, str]:
        config = fake.add_blob(b'{"description": "not an image"}')
        body = _manifest(
            good,
            mediaType=MT_DOCKER_MANIFEST,
            config={"mediaType": media_type, "digest": config, "size": 30},
        )
        fake.add_manifest(REPO, tag, body, MT_DOCKER_MANIFEST)
        return f"{REPO}:{tag}", words

    return case


def _lying_by_tag(fake: FakeRegistry, good: ImageInfo) -> tuple[str, str]:
    claimed = sha256_digest(b"the digest the registry claims")
    fake.add_manifest(REPO, "lying-tag", good.manifest, MT_OCI_MANIFEST, digest=claimed)
    return f"{REPO}:lying-tag", f"manifest verification failed for digest {claimed}"


def _lying_by_digest(fake: FakeRegistry, good: ImageInfo) -> tuple[str, str]:
    claimed = sha256_digest(b"another claimed digest")
    body = _manifest(good, annotations={"x": "y"})
    fake.add_manifest(REPO, None, body, MT_OCI_MANIFEST, digest=claimed)
    return f"{REPO}@{claimed}", f"manifest verification failed for digest {claimed}"


def _lying_get_by_tag(fake: FakeRegistry, good: ImageInfo) -> tuple[str, str]:
    # No HEAD: the GET by tag says a digest its bytes do not have.
    claimed = sha256_digest(b"yet another claimed digest")
    fake.add_manifest(REPO, "lying-get", good.manifest, MT_OCI_MANIFEST, digest=claimed, head=False)
    return f"{REPO}:lying-get", f"manifest verification failed for digest {claimed}"


def _bad_child(fake: FakeRegistry, good: ImageInfo) -> tuple[str, str]:
    child = b'{"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json"'
    digest = fake.add_manifest(REPO, None, child, MT_OCI_MANIFEST)
    index = {
        "schemaVersion": 2,
        "mediaType": MT_OCI_INDEX,
        "manifests": [
            {
                "mediaType": MT_OCI_MANIFEST,
                "digest": digest,
                "size": len(child),
                "platform": {"os": "linux", "architecture": "amd64"},
            }
        ],
    }
    fake.add_manifest(REPO, "bad-child", index, MT_OCI_INDEX)
    return f"{REPO}:bad-child", "malformed manifest: not valid JSON"


CASES: dict[str, Case] = {
    "bad-json": _serve(
        "bad-json", b'{"schemaVersion": 2, "layers": [', MT_OCI_MANIFEST, "not valid JSON"
    ),
    "not-utf8": _serve("not-utf8", b"\xff\xfe{}", MT_OCI_MANIFEST, "not valid JSON"),
    "empty-body": _serve("empty-body", b"", MT_OCI_MANIFEST, "not valid JSON"),
    "not-an-object": _serve(
        "not-an-object", b"[1, 2, 3]", MT_OCI_MANIFEST, "expected a JSON object, got list"
    ),
    "layers-not-a-list": _serve(
        "layers-not-a-list",
        {"schemaVersion": 2, "mediaType": MT_OCI_MANIFEST, "config": {}, "layers": "nope"},
        MT_OCI_MANIFEST,
        "layers must be a list",
    ),
    "size-is-a-string": lambda fake, good: _serve(
        "size-is-a-string",
        _manifest(good, config=_config(good, size="123")),
        MT_OCI_MANIFEST,
        "size must be a non-negative integer",
    )(fake, good),
    "schema-version-string": lambda fake, good: _serve(
        "schema-version-string",
        _manifest(good, schemaVersion="2"),
        MT_OCI_MANIFEST,
        "schemaVersion is '2', expected 2",
    )(fake, good),
    "missing-config": lambda fake, good: _serve(
        "missing-config",
        _manifest(good, config=None),
        MT_OCI_MANIFEST,
        "invalid config descriptor",
    )(fake, good),
    "missing-layer-digest": lambda fake, good: _serve(
        "missing-layer-digest",
        _manifest(good, layers=[{"mediaType": "x", "size": 1}]),
        MT_OCI_MANIFEST,
        "invalid layer 0 digest None",
    )(fake, good),
    "bad-layer-digest": lambda fake, good: _serve(
        "bad-layer-digest",
        _manifest(good, layers=[{"mediaType": "x", "size": 1, "digest": "sha256:../../etc"}]),
        MT_OCI_MANIFEST,
        "invalid layer 0 digest",
    )(fake, good),
    "index-without-manifests": _serve(
        "index-without-manifests",
        {"schemaVersion": 2, "mediaType": MT_OCI_INDEX},
        MT_OCI_INDEX,
        "manifests must be a list",
    ),
    "index-platform-string": _serve(
        "index-platform-string",
        {
            "schemaVersion": 2,
            "mediaType": MT_OCI_INDEX,
            "manifests": [
                {
                    "mediaType": MT_OCI_MANIFEST,
                    "digest": sha256_digest(b"x"),
                    "size": 1,
                    "platform": "linux/amd64",
                }
            ],
        },
        MT_OCI_INDEX,
        "platform must be an object",
    ),
    "index-bad-child": _bad_child,
    "media-type-mismatch": lambda fake, good: _serve(
        "media-type-mismatch",
        _manifest(good, mediaType=MT_DOCKER_MANIFEST),
        MT_OCI_MANIFEST,
        "but the body says",
    )(fake, good),
    "lying-digest-by-tag": _lying_by_tag,
    "lying-digest-by-digest": _lying_by_digest,
    "lying-digest-get-by-tag": _lying_get_by_tag,
    "5MiB-with-length": lambda fake, good: _serve(
        "big", _padded(good, 5 * 1024 * 1024), MT_OCI_MANIFEST, f"over the {LIMIT}-byte limit"
    )(fake, good),
    "5MiB-chunked": lambda fake, good: _serve(
        "big-chunked",
        _padded(good, 5 * 1024 * 1024 + 1),
        MT_OCI_MANIFEST,
        f"larger than the {LIMIT}-byte limit",
        content_length=False,
    )(fake, good),
    "unsupported-media-type": _serve(
        "unsupported",
        {"schemaVersion": 2},
        "application/vnd.example.thing.v1+json",
        "unsupported manifest format: application/vnd.example.thing.v1+json",
    ),
    "generic-type-unknown-body": _serve(
        "generic", {"hello": "world"}, "application/json", "unsupported manifest format"
    ),
    "plugin-config": _plugin(
        "plugin",
        "application/vnd.docker.plugin.v1+json",
        "Encountered remote 'application/vnd.docker.plugin.v1+json' (plugin) when fetching",
    ),
    "helm-config": _plugin(
        "helm", "application/vnd.cncf.helm.config.v1+json", "(Helm chart) when fetching"
    ),
    "unknown-config": _plugin(
        "unknown-config", "application/vnd.example.config.v1+json", "(unknown) when fetching"
    ),
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_malformed_manifest_is_one_line_and_leaves_the_store(
    fake: FakeRegistry, good: ImageInfo, template_root: Path, tmp_path: Path, case: str
) -> None:
    root = tmp_path / "root"
    shutil.copytree(template_root, root)
    before = snapshot(root)
    assert before[1], "the good pull is listed"
    ref, words = CASES[case](fake, good)

    proc = run_cli("pull", fake.ref(ref), "--root", str(root))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert proc.stderr.startswith("Error: "), proc.stderr
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert words in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr) < 400, proc.stderr
    assert snapshot(root) == before


def test_fake_registry_serves_a_good_pull(fake: FakeRegistry, tmp_path: Path) -> None:
    proc = run_cli("pull", fake.ref(GOOD), "--root", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-2:] == [
        f"Status: Downloaded newer image for {fake.ref(GOOD)}",
        fake.ref(GOOD),
    ]


# -- bounds on the manifests one pull follows --------------------------------


def _index(entries: list[dict[str, Any]], **extra: Any) -> bytes:
    return json.dumps(
        {"schemaVersion": 2, "mediaType": MT_OCI_INDEX, "manifests": entries, **extra}
    ).encode()


def _entry(media_type: str, digest: str, body: bytes, **extra: Any) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": digest, "size": len(body), **extra}


def _manifest_gets(fake: FakeRegistry, repo: str) -> list[str]:
    return [
        r.path
        for r in fake.requests()
        if r.method == "GET" and r.path.startswith(f"/v2/{repo}/manifests/")
    ]


def _pull_refused(fake: FakeRegistry, template_root: Path, tmp_path: Path, ref: str) -> str:
    """Pull `ref` with the CLI into a copy of the template store: it must fail
    with one line and leave the store as it was. Returns that line."""
    root = tmp_path / "root"
    shutil.copytree(template_root, root)
    before = snapshot(root)
    proc = run_cli("pull", "--platform", "linux/amd64", fake.ref(ref), "--root", str(root))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert proc.stderr.startswith("Error: ") and proc.stderr.count("\n") == 1, proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr) < 400, proc.stderr
    assert snapshot(root) == before
    return proc.stderr


@pytest.mark.timeout(30)
def test_index_chain_1500_deep_is_refused_at_the_depth_limit(
    fake: FakeRegistry, template_root: Path, tmp_path: Path
) -> None:
    """Each index's one entry is the next index: followed MAX_INDEX_DEPTH deep, then refused
    (before the limit, this ended in a RecursionError)."""
    repo = "test/deep-chain"
    body = _index([])
    digest = fake.add_manifest(repo, None, body, MT_OCI_INDEX)
    for _ in range(1500):
        body = _index([_entry(MT_OCI_INDEX, digest, body)])
        digest = fake.add_manifest(repo, None, body, MT_OCI_INDEX)
    fake.add_manifest(repo, "top", body, MT_OCI_INDEX)
    fake.clear_requests()
    error = _pull_refused(fake, template_root, tmp_path, f"{repo}:top")
    assert f"nests indexes more than {MAX_INDEX_DEPTH} deep" in error, error
    # The top one and MAX_INDEX_DEPTH below it, the last one being refused.
    assert len(_manifest_gets(fake, repo)) == MAX_INDEX_DEPTH + 1


@pytest.mark.timeout(30)
def test_thousands_of_nested_indexes_without_a_match_are_refused_at_the_count_limit(
    fake: FakeRegistry, template_root: Path, tmp_path: Path
) -> None:
    """An index of 3000 entries, each a nested index with nothing for the
    platform: tried one after the other up to MAX_MANIFESTS_PER_PULL, then refused."""
    repo = "test/wide"
    s390x = {"os": "linux", "architecture": "s390x"}
    nowhere = sha256_digest(b"an s390x image that is never fetched")
    entries = []
    for i in range(3000):
        nested = _index(
            [{"mediaType": MT_OCI_MANIFEST, "digest": nowhere, "size": 1, "platform": s390x}],
            annotations={"n": str(i)},
        )
        digest = fake.add_manifest(repo, None, nested, MT_OCI_INDEX)
        entries.append(_entry(MT_OCI_INDEX, digest, nested))
    fake.add_manifest(repo, "top", _index(entries), MT_OCI_INDEX)
    fake.clear_requests()
    error = _pull_refused(fake, template_root, tmp_path, f"{repo}:top")
    assert f"more than {MAX_MANIFESTS_PER_PULL} manifests" in error, error
    gets = _manifest_gets(fake, repo)
    assert len(gets) == MAX_MANIFESTS_PER_PULL
    assert not any(g.endswith(nowhere) for g in gets)


def test_indexes_nested_to_the_depth_limit_still_pull(
    fake: FakeRegistry, good: ImageInfo, tmp_path: Path
) -> None:
    """The limit is not off by one: an image MAX_INDEX_DEPTH indexes down pulls."""
    repo = "test/deep-ok"
    fake.add_image(repo, None, good)
    body = good.blob(good.manifest_digest)
    digest = good.manifest_digest
    media_type = MT_OCI_MANIFEST
    amd64 = {"platform": {"os": "linux", "architecture": "amd64"}}
    for _ in range(MAX_INDEX_DEPTH):
        body = _index([_entry(media_type, digest, body, **amd64)])
        digest = fake.add_manifest(repo, None, body, MT_OCI_INDEX)
        media_type = MT_OCI_INDEX
    fake.add_manifest(repo, "top", body, MT_OCI_INDEX)
    with imgpull.Client(tmp_path) as client:
        image = client.pull(fake.ref(f"{repo}:top"), platform="linux/amd64")
    assert image.manifest_digest == good.manifest_digest
    assert image.digest == digest
