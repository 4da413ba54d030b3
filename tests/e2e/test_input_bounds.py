"""Bounds on input a registry or a user gives in bulk (issue 16, "Bounds
still missing"): a paged tag list for `-a`, a tag list holding an invalid
tag, a references file with a huge line or many failing lines, and a
platform specifier with path games. Each ends in one line, in bounded
memory, or costs only its own entry."""

from __future__ import annotations

import gc
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.cli import run_cli, run_cli_measured
from support.hostile import HostileRegistry
from support.images import ImageInfo, LayoutCache, random_layer

from imgpull import Client
from imgpull.errors import InvalidReferenceError, RegistryError
from imgpull.registry.client import MAX_TAGS
from imgpull.retry import RetryPolicy

REPO = "test/a"
MiB = 1024 * 1024


@pytest.fixture(scope="module")
def image(layout_cache: LayoutCache) -> ImageInfo:
    return layout_cache.get([random_layer(8 * 1024, seed=1601)], ref="input-bounds")


@pytest.fixture
def reg(image: ImageInfo) -> Iterator[HostileRegistry]:
    registry = HostileRegistry(auth="none").start()
    registry.add_image(REPO, "v1", image)
    registry.add_image(REPO, "v2", image)
    yield registry
    registry.stop()


# -a with Link pagination ---------------------------------------------------------


def _huge_page(page: int) -> list[str]:
    """About 14 MB of JSON: 1.2 million short tags."""
    return [f"p{page}t{i}" for i in range(1_200_000)]


def test_a_paged_tag_list_of_huge_pages_stops_in_bounded_memory(
    reg: HostileRegistry, tmp_path: Path
) -> None:
    """12 pages of ~14 MB of short tags took 1165 MB of RSS: now the first
    page past the tag bound ends the run in one line, before it is parsed."""
    reg.tag_pages = _huge_page
    reg.tag_page_count = 12
    code, _out, err, rss_kib = run_cli_measured(
        "pull", "-q", "-a", reg.ref(REPO), "--root", str(tmp_path / "store"), timeout=120
    )
    print(f"peak RSS {rss_kib / 1024:.0f} MB")
    assert code == 1, (_out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert f"more than {MAX_TAGS:,} tags" in lines[0] and "by name" in lines[0], err
    assert "Traceback" not in err
    assert rss_kib < 200 * 1024, f"peak RSS {rss_kib / 1024:.0f} MB"
    pages = [s for s in reg.registry.seen() if "/tags/list" in s.target]
    assert len(pages) == 1, [p.target for p in pages]


def test_the_tag_bound_counts_every_page(reg: HostileRegistry, tmp_path: Path) -> None:
    """Pages each under the bound, together over it: refused at the page that
    crosses it, and nothing pulled."""
    per_page = MAX_TAGS // 3 + 1
    reg.tag_pages = lambda page: [f"t{page}-{i}" for i in range(per_page)]
    reg.tag_page_count = 5
    with Client(tmp_path / "store") as client, pytest.raises(RegistryError) as caught:
        client.pull_all_tags(reg.ref(REPO))
    assert f"more than {MAX_TAGS:,} tags" in str(caught.value)
    pages = [s for s in reg.registry.seen() if "/tags/list" in s.target]
    assert len(pages) == 3
    assert not any("/manifests/" in s.target for s in reg.registry.seen())


def test_a_paged_tag_list_under_the_bound_is_pulled(reg: HostileRegistry, tmp_path: Path) -> None:
    reg.tag_pages = lambda page: ["v1", "v2"][page : page + 1]
    reg.tag_page_count = 2
    with Client(tmp_path / "store") as client:
        pulled = client.pull_all_tags(reg.ref(REPO))
    assert [i.reference.tag for i in pulled] == ["v1", "v2"]


# -a with an invalid tag ----------------------------------------------------------


BAD_TAG = "bad tag\x1b[2J" + "x" * 500


def test_an_invalid_tag_listed_is_skipped_and_the_others_pulled(
    reg: HostileRegistry, tmp_path: Path
) -> None:
    reg.tags[REPO] = ["v1", BAD_TAG, "v2"]
    store = tmp_path / "store"
    result = run_cli("pull", "-q", "-a", reg.ref(REPO), "--root", str(store), timeout=60)
    assert result.returncode == 1, result
    err = result.stderr
    assert "Traceback" not in err and "\x1b" not in err, err
    skipped = [line for line in err.splitlines() if "invalid tag, skipped" in line]
    assert len(skipped) == 1 and len(skipped[0]) < 600, err
    assert "(an invalid tag)" in err.splitlines()[-1], err
    # Both good tags were pulled, in the registry's order.
    images = run_cli("images", "--root", str(store)).stdout
    assert "v1" in images and "v2" in images, images


def test_an_invalid_tag_stops_a_library_run_without_on_error(
    reg: HostileRegistry, tmp_path: Path
) -> None:
    reg.tags[REPO] = ["v1", BAD_TAG, "v2"]
    failed: list[str] = []
    with Client(tmp_path / "store") as client:
        pulled = client.pull_all_tags(
            reg.ref(REPO), on_error=lambda ref, exc: failed.append(f"{ref}|{exc}")
        )
        assert [i.reference.tag for i in pulled] == ["v1", "v2"]
        assert len(failed) == 1 and "invalid tag, skipped" in failed[0]
        with pytest.raises(InvalidReferenceError, match="invalid tag, skipped"):
            client.pull_all_tags(reg.ref(REPO))


# --from-file ---------------------------------------------------------------------


def test_a_huge_line_in_a_references_file_ends_in_one_line(tmp_path: Path) -> None:
    """A 100 MB line was echoed whole to stderr (RSS 635 MB): now the line
    is refused as it is read, in one short line, before any pull."""
    refs = tmp_path / "refs.txt"
    with refs.open("wb") as f:
        f.write(b"127.0.0.1:9/a:b\n")
        chunk = b"a" * MiB
        for _ in range(100):
            f.write(chunk)
        f.write(b"\n")
    code, _out, err, rss_kib = run_cli_measured(
        "pull", "--from-file", str(refs), "--root", str(tmp_path / "store")
    )
    print(f"peak RSS {rss_kib / 1024:.0f} MB, stderr {len(err)} bytes")
    assert code == 1
    assert err.strip().count("\n") == 0 and len(err) < 300, err[:500]
    assert "line 2 is over 4096 bytes" in err
    assert rss_kib < 100 * 1024


def test_many_failing_lines_echo_each_cut_in_bounded_memory(tmp_path: Path) -> None:
    """10k failing lines peaked at 252 MB: each echoed line is cut, and the
    run stays in bounded memory."""
    refs = tmp_path / "refs.txt"
    bad = "x" * 3000 + "!"  # no valid reference (a "!"): fails before any request
    refs.write_text("".join(f"{bad}{i}\n" for i in range(10_000)))
    start = time.monotonic()
    code, _out, err, rss_kib = run_cli_measured(
        "pull", "-q", "--from-file", str(refs), "--root", str(tmp_path / "store"), timeout=300
    )
    print(f"peak RSS {rss_kib / 1024:.0f} MB in {time.monotonic() - start:.1f} s")
    assert code == 1
    errors = [line for line in err.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 10_000
    assert max(len(line) for line in errors) < 600
    assert rss_kib < 150 * 1024, f"peak RSS {rss_kib / 1024:.0f} MB"


def test_a_references_file_of_invalid_utf8_names_its_line(tmp_path: Path) -> None:
    refs = tmp_path / "refs.txt"
    refs.write_bytes(b"a:b\n\xff\xfe\n")
    result = run_cli("pull", "--from-file", str(refs), "--root", str(tmp_path / "store"))
    assert result.returncode == 1
    assert "line 2 is not UTF-8 text" in result.stderr


# --platform ----------------------------------------------------------------------


@pytest.mark.parametrize("spec", ["linux/../amd64", "linux/amd64/..", "linux/./amd64"])
def test_a_platform_with_dot_components_is_refused_before_any_request(
    reg: HostileRegistry, tmp_path: Path, spec: str
) -> None:
    result = run_cli(
        "pull", "--platform", spec, reg.ref(f"{REPO}:v1"), "--root", str(tmp_path / "store")
    )
    assert result.returncode == 1
    err = result.stderr
    assert err.count("\n") == 1 and "with a '.' only between them" in err, err
    assert reg.registry.seen() == []


# Many registry hosts -------------------------------------------------------------


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / MiB


def test_many_registry_hosts_share_their_tls_roots(tmp_path: Path) -> None:
    """Each registry host a Client talked to kept its own copy of the
    system's TLS roots (~1 MB: Python's and the native side's): a bulk pull
    naming 200 hosts grew by ~200 MB. One copy is shared now."""
    refs = [f"127.0.{i // 250}.{i % 250 + 1}:9/a:b" for i in range(200)]
    with Client(tmp_path / "store", retry=RetryPolicy(attempts=1)) as client:
        client.pull_many(refs[:2])  # what every pull loads, loaded
        gc.collect()
        before = _rss_mb()
        results = client.pull_many(refs[2:])
        gc.collect()
        grown = _rss_mb() - before
    print(f"RSS grew {grown:.1f} MB for {len(refs) - 2} hosts")
    assert all(isinstance(r, RegistryError) for r in results), results[:3]
    assert grown < 40, f"{grown:.0f} MB for {len(refs) - 2} hosts"
