import os
import socket
import uuid
from pathlib import Path

import fsspec
import pandas as pd
import pytest

from hpasc.errors import OutputError
from hpasc.io.atomic import atomic_open, atomic_path, atomic_write, remove_dead_temporaries


def leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if ".hpasc-tmp-" in p.name]


def test_atomic_write_bytes_and_text_to_a_path_and_file_url(tmp_path):
    atomic_write(tmp_path / "new" / "a.bin", b"\x00\x01")
    atomic_write((tmp_path / "b.txt").as_uri(), "é")
    assert (tmp_path / "new" / "a.bin").read_bytes() == b"\x00\x01"
    assert (tmp_path / "b.txt").read_text(encoding="utf-8") == "é"
    atomic_write(tmp_path / "b.txt", "second")  # replaces
    assert (tmp_path / "b.txt").read_text() == "second"
    assert leftovers(tmp_path) == [] and leftovers(tmp_path / "new") == []


def test_atomic_write_to_memory_url():
    url = f"memory://atomic-{uuid.uuid4().hex}/d/x.json"
    atomic_write(url, '{"a": 1}')
    assert fsspec.filesystem("memory").cat_file(url) == b'{"a": 1}'


def test_an_error_keeps_the_old_file_and_no_temp(tmp_path):
    target = tmp_path / "t.parquet"
    atomic_write(target, b"old")
    with pytest.raises(RuntimeError), atomic_open(target) as f:
        f.write(b"half")
        raise RuntimeError("crash mid-write")
    assert target.read_bytes() == b"old" and leftovers(tmp_path) == []
    with atomic_open(target) as f:
        pd.DataFrame({"a": [1, 2]}).to_parquet(f, index=False)
    assert pd.read_parquet(target)["a"].tolist() == [1, 2]


def test_unwritable_target_is_an_output_error_naming_it(tmp_path):
    (tmp_path / "dir").mkdir()
    with pytest.raises(OutputError, match="dir"):
        atomic_write(tmp_path / "dir", b"x")  # a folder is in the way
    blocker = tmp_path / "file"
    blocker.write_bytes(b"")
    with pytest.raises(OutputError, match="file"):
        atomic_write(blocker / "sub.txt", b"x")  # its parent is a file
    assert leftovers(tmp_path) == []


def test_atomic_path_for_files_and_folders(tmp_path):
    target = tmp_path / "out.zip"
    with atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and not target.exists()
        tmp.write_bytes(b"zip")
    assert target.read_bytes() == b"zip"
    folder = tmp_path / "set"
    for content in (b"1", b"2"):
        with atomic_path(folder) as tmp:
            tmp.mkdir()
            (tmp / "f.txt").write_bytes(content)
    assert (folder / "f.txt").read_bytes() == b"2"
    with pytest.raises(KeyError), atomic_path(folder) as tmp:
        tmp.mkdir()
        raise KeyError("boom")
    assert (folder / "f.txt").read_bytes() == b"2" and leftovers(tmp_path) == []
    with pytest.raises(ValueError, match="local path"), atomic_path("memory://x/y"):
        pass


def test_dead_writers_temporaries_are_removed_live_ones_kept(tmp_path):
    host = socket.gethostname()
    dead_pid = 2**22 + 12345  # above the default pid_max: never a live process
    live = tmp_path / f".a.csv.hpasc-tmp-{host}-{os.getpid()}-abc"
    dead_file = tmp_path / f".a.csv.hpasc-tmp-{host}-{dead_pid}-abc"
    dead_dir = tmp_path / f".set.hpasc-tmp-{host}-{dead_pid}-def"
    for p in (live, dead_file):
        p.write_bytes(b"x")
    dead_dir.mkdir()
    (dead_dir / "f").write_bytes(b"x")
    assert remove_dead_temporaries(tmp_path) == 2
    assert leftovers(tmp_path) == [live.name]
