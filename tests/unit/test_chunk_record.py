"""The record of a ranged download's chunks (store/content.py ChunkRecord),
the byte ranges the transfer keeps of them (transfer.py _Spans), and the
--max-connections-per-layer option."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.cli import run_cli

import imgpull
from imgpull.errors import ImgpullError
from imgpull.store.content import ChunkRecord
from imgpull.transfer import _Spans


def _partial(tmp_path: Path, size: int) -> Path:
    partial = tmp_path / "partial"
    partial.write_bytes(b"x" * size)
    return partial


def test_record_gives_the_prefix_up_to_the_first_gap_and_the_chunks_past_it(
    tmp_path: Path,
) -> None:
    record = ChunkRecord(_partial(tmp_path, 1000))
    record.begin(100, [])
    record.add(300, 400)
    record.add(100, 200)
    record.prefix(150)
    record.add(600, 700)
    assert record.load(1000) == (200, [(300, 400), (600, 700)])


def test_record_trusts_nothing_past_the_file_or_the_blob(tmp_path: Path) -> None:
    record = ChunkRecord(_partial(tmp_path, 500))
    record.begin(800, [(100, 900), (200, 300)])
    # The prefix is cut at the file's end; a chunk past it is dropped.
    assert record.load(1000) == (500, [])
    assert record.load(400) == (400, [])


def test_record_torn_or_missing(tmp_path: Path) -> None:
    partial = _partial(tmp_path, 1000)
    record = ChunkRecord(partial)
    assert not record.exists()
    assert record.load(1000) == (0, [])
    record.path.write_text("prefix 100\n300 400\n500 6")  # killed mid-line
    assert record.load(1000) == (100, [(300, 400)])
    record.path.write_bytes(b"\xff\xfe")
    assert record.load(1000) == (0, [])
    record.remove()
    assert not record.exists()


def test_spans() -> None:
    spans = _Spans([(10, 20), (30, 40)])
    assert spans.reach(10) == 20 and spans.reach(20) == 20 and spans.reach(5) == 5
    assert spans.next_start(10, 99) == 30 and spans.next_start(30, 99) == 99
    assert spans.gaps(0, 50) == [(0, 10), (20, 30), (40, 50)]
    assert spans.gaps(12, 35) == [(20, 30)]
    assert spans.total() == 20
    spans.add(20, 30)
    assert spans.items() == [(10, 40)]
    spans.add(5, 12)
    assert spans.items() == [(5, 40)]


@pytest.mark.parametrize("n", ["0", "17"])
def test_cli_refuses_connections_per_layer_out_of_range(n: str, tmp_path: Path) -> None:
    proc = run_cli(
        "pull", "--max-connections-per-layer", n, "--root", str(tmp_path), "x/y", timeout=60
    )
    assert proc.returncode == 2
    assert "--max-connections-per-layer" in proc.stderr


@pytest.mark.parametrize("n", [0, 17])
def test_client_refuses_connections_per_layer_out_of_range(n: int, tmp_path: Path) -> None:
    with pytest.raises(ImgpullError, match="max connections per layer must be 1 to 16"):
        imgpull.Client(tmp_path, max_connections_per_layer=n)
