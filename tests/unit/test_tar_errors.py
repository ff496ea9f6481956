"""WebDataset tars whose stream breaks: the samples before the break are kept, and one error
row stands for the rest; `extensions` picks the media members (video jobs)."""

from __future__ import annotations

import io
import json
import tarfile

import pytest

from labeler.config import VIDEO_EXTENSIONS
from labeler.sources.webdataset import tar_samples
from labeler.storage import read_bytes

MEMBERS = {"k1.jpg": b"J" * 700, "k1.json": json.dumps({"a": 1}).encode(), "k2.jpg": b"K" * 100,
           "k2.txt": b"two", "k3.png": b"P" * 100}


def _tar_bytes(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _rows(path) -> list[tuple[str, dict, object]]:
    """(id, metadata, bytes or the read error) of every sample of the tar at `path`."""
    rows = []
    for id_, uri, _, meta in tar_samples(str(path), "s.tar"):
        try:
            content = read_bytes(uri)
        except OSError as err:
            content = str(err)
        rows.append((id_, meta, content))
    return rows


def _broken(data: bytes, case: str) -> bytes:
    k2 = data.index(b"k2.jpg")  # the header of the second sample's image
    if case == "corrupt header":
        return data[:k2] + b"garbage!" + data[k2 + 8:]
    if case == "cut inside a header":
        return data[:k2 + 100]
    if case == "cut inside metadata":
        return data[:data.index(b"k1.json") + 512 + 3]
    raise ValueError(case)


@pytest.mark.parametrize("case, offset, reason", [
    ("corrupt header", 1536 + 1024, "a member header is corrupt"),
    ("cut inside a header", 1536 + 1024, "the file ends inside a member header"),
    ("cut inside metadata", 1536, "the file ends inside a member"),
])
def test_a_broken_stream_keeps_the_samples_before_it_and_one_error_row(tmp_path, case, offset,
                                                                      reason):
    path = tmp_path / "s.tar"
    path.write_bytes(_broken(_tar_bytes(MEMBERS), case))
    rows = _rows(path)
    assert [r[0] for r in rows] == ["s.tar/k1", f"s.tar/<unreadable from byte {offset}>"]
    assert rows[0][2] == b"J" * 700
    assert rows[0][1] == ({"a": 1} if case != "cut inside metadata" else {})
    assert rows[1][1:] == ({}, f"the tar {path} is unreadable from byte {offset} on ({reason}): "
                               f"the samples stored after that point are lost")


def test_a_media_member_cut_short_is_its_own_error_row(tmp_path):
    data = _tar_bytes(MEMBERS)
    path = tmp_path / "s.tar"
    path.write_bytes(data[:data.index(b"K" * 100) + 40])  # inside k2.jpg's data
    rows = _rows(path)
    assert [r[0] for r in rows] == ["s.tar/k1", "s.tar/k2"]
    assert rows[1][2] == f"{path} ends before byte {data.index(b'K' * 100) + 100} (truncated)"


@pytest.mark.parametrize("content, reason", [(b"", "the file is empty"),
                                             (b"not a tar at all" * 64, "a member header is corrupt")])
def test_a_file_that_is_no_tar_is_one_error_row(tmp_path, content, reason):
    (tmp_path / "s.tar").write_bytes(content)
    assert _rows(tmp_path / "s.tar") == [
        ("s.tar/<unreadable from byte 0>", {},
         f"the tar {tmp_path / 's.tar'} is unreadable from byte 0 on ({reason}): "
         f"the samples stored after that point are lost")]


def test_complete_tars_have_no_error_row(tmp_path):
    data = _tar_bytes(MEMBERS)
    (tmp_path / "s.tar").write_bytes(data)
    assert [r[0] for r in _rows(tmp_path / "s.tar")] == ["s.tar/k1", "s.tar/k2", "s.tar/k3"]
    # Cut at a member boundary (no end-of-archive blocks): nothing unreadable is left.
    (tmp_path / "s.tar").write_bytes(data[:data.index(b"k3.png")])
    assert [r[0] for r in _rows(tmp_path / "s.tar")] == ["s.tar/k1", "s.tar/k2"]
    (tmp_path / "s.tar").write_bytes(b"\0" * 10240)  # an empty archive
    assert _rows(tmp_path / "s.tar") == []


def test_extensions_pick_the_media_members(tmp_path):
    """A video2dataset shard: key.mp4 beside key.json and key.txt."""
    path = tmp_path / "v.tar"
    path.write_bytes(_tar_bytes({"v1.mp4": b"MP4-1", "v1.json": b'{"duration": 2.5}',
                                 "v1.txt": b"a clip", "v2.webm": b"WEBM", "v2.jpg": b"thumb"}))
    samples = tar_samples(str(path), "v.tar", extensions=VIDEO_EXTENSIONS)
    assert [(s[0], read_bytes(s[1]), s[3]) for s in samples] == [
        ("v.tar/v1", b"MP4-1", {"duration": 2.5, "caption": "a clip"}),
        ("v.tar/v2", b"WEBM", {})]
    assert [s[0] for s in tar_samples(str(path), "v.tar")] == ["v.tar/v2"]  # images by default
