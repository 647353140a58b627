import gc
import hashlib
import io
import multiprocessing as mp
import os
import pickle
import subprocess
import sys
import textwrap
import uuid
import zipfile
from pathlib import Path

import fsspec
import pytest

import hpasc.io.store as store_mod
from hpasc.errors import InputError, OutputError
from hpasc.io.store import Store, clean_name, open_store

SRC = Path(__file__).resolve().parents[1] / "src"
KINDS = ["folder", "zip", "zip_sub", "memory", "file_url"]
UNSAFE = ["../evil.txt", "a/../../evil.txt", "/etc/passwd", "\\evil.txt", "C:/evil.txt", "..\\x"]


def make_url(kind: str, tmp_path: Path) -> str:
    return {
        "folder": str(tmp_path / "folder"),
        "zip": str(tmp_path / "x.zip"),
        "zip_sub": str(tmp_path / "y.zip" / "sub" / "dir"),
        "memory": f"memory://test-{uuid.uuid4().hex}/root",
        "file_url": (tmp_path / "viaurl").as_uri(),
    }[kind]


@pytest.fixture(params=KINDS)
def url(request, tmp_path) -> str:
    return make_url(request.param, tmp_path)


def run_py(code: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(SRC))
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


def make_zip(path: Path, entries: dict[str, bytes]) -> None:
    with zipfile.ZipFile(path, "w") as z:
        for name, data in entries.items():
            z.writestr(name, data)


def test_round_trip(url):
    s = Store(url)
    assert str(s) == url and s.url == url
    assert s.list() == [] and not s.exists("a.txt")
    s.write_bytes("a.txt", b"alpha")
    s.write_bytes("k/b_red.png", b"\x89PNG-ish")
    s.write_bytes("c_red.tif", b"tiff")
    with s.open("big.bin", "wb") as f:
        for i in range(100):
            f.write(bytes([i]) * 1000)
    # reads after writes on the same object, before close
    assert s.read_bytes("a.txt") == b"alpha"
    assert s.list() == ["a.txt", "big.bin", "c_red.tif"]
    assert s.list(recursive=True) == ["a.txt", "big.bin", "c_red.tif", "k/b_red.png"]
    assert s.list("*_red.*") == ["c_red.tif"]
    assert s.list("*_red.*", recursive=True) == ["c_red.tif", "k/b_red.png"]
    assert s.exists("k/b_red.png") and not s.exists("k")
    with s.open("big.bin") as f:
        assert f.read(1000) == b"\x00" * 1000
        assert len(f.read()) == 99_000
    s.write_bytes("a.txt", b"alpha-2")  # overwrite
    s.remove("c_red.tif")
    assert not s.exists("c_red.tif")
    with pytest.raises(InputError):
        s.remove("c_red.tif")
    assert s.sub("k").list() == ["b_red.png"]
    assert s.sub("k").read_bytes("b_red.png") == b"\x89PNG-ish"
    assert str(s.sub("k")) == url.rstrip("/") + "/k"
    s.close()

    again = Store(url)  # a fresh object sees the committed state
    assert again.list(recursive=True) == ["a.txt", "big.bin", "k/b_red.png"]
    assert again.read_bytes("a.txt") == b"alpha-2"
    assert again.sub("k").exists("b_red.png")
    # a sub-store as a location of its own
    assert Store(url.rstrip("/") + "/k").list() == ["b_red.png"]
    assert pickle.loads(pickle.dumps(again.sub("k"))).list() == ["b_red.png"]


def test_write_stream_discarded_on_error(url):
    s = Store(url)
    s.write_bytes("keep.txt", b"old")
    with pytest.raises(RuntimeError), s.open("keep.txt", "wb") as f:
        f.write(b"half")
        raise RuntimeError("crash while writing")
    assert s.read_bytes("keep.txt") == b"old"
    s.close()
    assert Store(url).read_bytes("keep.txt") == b"old"


def test_missing_file_names_location(url):
    s = Store(url)
    s.write_bytes("present.txt", b"x")
    for call in (s.read_bytes, s.open):
        with pytest.raises(InputError, match=r"not found: .*nope\.txt.*check the name"):
            call("nope.txt")


@pytest.mark.parametrize("name", UNSAFE)
def test_zip_slip_refused_on_read_and_write(url, name, tmp_path):
    s = Store(url)
    with pytest.raises(InputError, match="unsafe file name"):
        s.write_bytes(name, b"x")
    with pytest.raises(InputError, match="unsafe file name"):
        s.read_bytes(name)
    with pytest.raises(InputError, match="unsafe file name"):
        s.open(name, "wb")
    with pytest.raises(InputError, match="unsafe file name"):
        s.sub(name)
    s.close()
    assert not (tmp_path / "evil.txt").exists()


def test_clean_name():
    assert clean_name("a//b/./c.png") == "a/b/c.png"
    assert clean_name("a\\b.png") == "a/b.png"
    with pytest.raises(InputError):
        clean_name("")


def test_zip_with_malicious_entry_is_not_listed_or_read(tmp_path):
    path = tmp_path / "evil.zip"
    make_zip(path, {"../evil.txt": b"x", "ok.txt": b"fine"})
    s = Store(path)
    with pytest.warns(UserWarning, match="unsafe names"):
        assert s.list() == ["ok.txt"]
    with pytest.raises(InputError, match="unsafe"):
        s.read_bytes("../evil.txt")


def test_folder_store_created_on_first_write_without_temp_leftovers(tmp_path):
    s = Store(tmp_path / "new" / "dir")
    assert not s.root_exists() and s.list() == []
    assert not (tmp_path / "new").exists()
    s.write_bytes("sub/a.png", b"x")
    assert s.root_exists()
    assert sorted(p.name for p in (tmp_path / "new" / "dir" / "sub").iterdir()) == ["a.png"]
    assert s.local_path("sub/a.png") == tmp_path / "new" / "dir" / "sub" / "a.png"
    assert Store((tmp_path / "new").as_uri()).local_path("x") == tmp_path / "new" / "x"
    assert Store(tmp_path / "x.zip").local_path("a") is None
    assert Store("memory://lp/x").local_path("a") is None
    assert open_store(s) is s


def test_zip_keeps_existing_entries_and_compression(tmp_path):
    path = tmp_path / "data.zip"
    make_zip(path, {"a.txt": b"old-a", "b.txt": b"old-b", "sub/c.txt": b"old-c"})
    with Store(path) as s:
        s.write_bytes("b.txt", b"new-b")
        s.write_bytes("img.png", b"png-bytes" * 100)
        s.write_bytes("notes.txt", b"text" * 100)
        s.remove("sub/c.txt")
    with zipfile.ZipFile(path) as z:
        assert sorted(z.namelist()) == ["a.txt", "b.txt", "img.png", "notes.txt"]
        assert z.read("a.txt") == b"old-a" and z.read("b.txt") == b"new-b"
        assert z.getinfo("img.png").compress_type == zipfile.ZIP_STORED
        assert z.getinfo("notes.txt").compress_type == zipfile.ZIP_DEFLATED
        assert z.testzip() is None
    assert [p.name for p in tmp_path.iterdir()] == ["data.zip"]  # no temp left behind


def test_zip_target_untouched_until_close(tmp_path):
    path = tmp_path / "data.zip"
    make_zip(path, {"a.txt": b"old"})
    before = path.read_bytes()
    s = Store(path / "inner")
    s.write_bytes("a.txt", b"new")
    assert path.read_bytes() == before
    assert s.read_bytes("a.txt") == b"new"
    assert Store(path).read_bytes("a.txt") == b"old"  # the committed archive is unchanged
    s.close()
    assert Store(path).read_bytes("inner/a.txt") == b"new"


def test_stores_on_one_zip_share_pending_writes(tmp_path):
    path = tmp_path / "shared.zip"
    images, masks = Store(path / "images"), Store(path / "masks")
    images.write_bytes("a.png", b"i")
    masks.write_bytes("a.png", b"m")
    images.close()
    with zipfile.ZipFile(path) as z:
        assert sorted(z.namelist()) == ["images/a.png", "masks/a.png"]


def test_crash_by_exception_keeps_old_archive(tmp_path):
    path = tmp_path / "data.zip"
    make_zip(path, {"a.txt": b"old-a"})
    with pytest.raises(RuntimeError), Store(path) as s:
        s.write_bytes("a.txt", b"new-a")
        s.write_bytes("b.txt", b"new-b")
        raise RuntimeError("crash before close")
    s2 = Store(path)
    assert s2.list() == ["a.txt"] and s2.read_bytes("a.txt") == b"old-a"
    assert [p.name for p in tmp_path.iterdir()] == ["data.zip"]


def test_killed_writer_keeps_old_archive(tmp_path):
    path = tmp_path / "data.zip"
    make_zip(path, {"a.txt": b"old-a", "b.txt": b"old-b"})
    proc = run_py(
        f"""
        import os
        from hpasc.io.store import Store
        s = Store({str(path)!r})
        for i in range(200):
            s.write_bytes(f"new/{{i}}.bin", os.urandom(5000))
        s.write_bytes("a.txt", b"new-a")
        os._exit(3)  # killed before close: no commit, no finalizer
        """
    )
    assert proc.returncode == 3, proc.stderr
    with zipfile.ZipFile(path) as z:
        assert z.testzip() is None
        assert sorted(z.namelist()) == ["a.txt", "b.txt"]
        assert z.read("a.txt") == b"old-a"
    # the dead writer's temp file is not shown as a file of the folder
    assert Store(tmp_path).list() == ["data.zip"]


def test_unclosed_zip_committed_at_normal_exit(tmp_path):
    path = tmp_path / "data.zip"
    proc = run_py(
        f"""
        from hpasc.io.store import Store
        s = Store({str(path)!r} + "/sub")
        s.write_bytes("a.txt", b"written")
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert Store(path).read_bytes("sub/a.txt") == b"written"


def test_zip_reader_opened_once_per_process(tmp_path, monkeypatch):
    path = tmp_path / "many.zip"
    make_zip(path, {f"{i}.txt": str(i).encode() for i in range(50)})
    opened = []
    real = zipfile.ZipFile

    def counting(*args, **kwargs):
        opened.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(store_mod.zipfile, "ZipFile", counting)
    s = Store(path)
    assert all(s.read_bytes(f"{i}.txt") == str(i).encode() for i in range(50))
    assert all(Store(path).exists(f"{i}.txt") for i in range(50))
    assert len(opened) == 1


def _digest_entries(args):
    store, names = args
    return os.getpid(), [hashlib.sha1(store.read_bytes(n)).hexdigest() for n in names]


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_processes_read_one_zip_concurrently(tmp_path, method):
    path = tmp_path / "shared.zip"
    payload = {f"e{i:03d}.bin": os.urandom(20_000 + i) for i in range(60)}
    make_zip(path, payload)
    s = Store(path)
    s.read_bytes("e000.bin")  # the parent's cached reader is inherited by forked workers
    names = sorted(payload)
    expected = [hashlib.sha1(payload[n]).hexdigest() for n in names]
    jobs = [(s, names[i:] + names[:i]) for i in range(8)]
    with mp.get_context(method).Pool(2) as pool:
        results = pool.map(_digest_entries, jobs, chunksize=1)
    for (_, job_names), (_, digests) in zip(jobs, results, strict=True):
        assert dict(zip(job_names, digests, strict=True)) == dict(zip(names, expected, strict=True))
    assert s.read_bytes("e005.bin") == payload["e005.bin"]


def _child_after_fork(store, queue):
    gc.collect()  # an inherited writer must not write into the parent's temp zip
    outcome = []
    try:
        store.read_bytes("pending.txt")
        outcome.append("read")
    except InputError:
        outcome.append("refused-read")
    try:
        store.write_bytes("child.txt", b"c")
        outcome.append("wrote")
    except OutputError:
        outcome.append("refused-write")
    store.close()
    gc.collect()
    queue.put(outcome)


def test_forked_child_leaves_parent_pending_zip_alone(tmp_path):
    path = tmp_path / "p.zip"
    s = Store(path)
    s.write_bytes("pending.txt", b"p" * 10_000)
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_child_after_fork, args=(s, queue))
    child.start()
    outcome = queue.get(timeout=30)
    child.join(30)
    assert outcome == ["refused-read", "refused-write"]
    s.write_bytes("after.txt", b"a")
    s.close()
    with zipfile.ZipFile(path) as z:
        assert z.testzip() is None
        assert sorted(z.namelist()) == ["after.txt", "pending.txt"]


def test_bad_locations(tmp_path):
    with pytest.raises(InputError, match=r"more than one \.zip"):
        Store(tmp_path / "a.zip" / "b.zip" / "c")
    with pytest.raises(InputError, match="chained zip URL"):
        Store("zip://x::")
    (tmp_path / "bad.zip").write_bytes(b"not a zip")
    with pytest.raises(InputError, match="not a readable zip"):
        Store(tmp_path / "bad.zip").list()
    with pytest.raises(ValueError, match="mode"):
        Store(tmp_path).open("x", "r+b")
    (tmp_path / "dir.zip").mkdir()  # a folder whose name ends in .zip is a folder
    Store(tmp_path / "dir.zip").write_bytes("f.txt", b"1")
    assert (tmp_path / "dir.zip" / "f.txt").read_bytes() == b"1"


def _zip_bytes(entries: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in entries.items():
            z.writestr(name, data)
    return buf.getvalue()


def test_chained_zip_urls_on_a_local_archive(tmp_path):
    path = tmp_path / "c.zip"
    with Store(path / "sub") as s:
        s.write_bytes("a.txt", b"A")
        s.write_bytes("d/b.txt", b"B")
    for url in (f"zip://sub::{path.as_uri()}", f"zip://sub::{path}"):
        s = Store(url)
        assert s.kind == "zip" and s.list(recursive=True) == ["a.txt", "d/b.txt"]
        assert s.read_bytes("d/b.txt") == b"B"
    whole = Store(f"zip::{path.as_uri()}")
    assert whole.list(recursive=True) == ["sub/a.txt", "sub/d/b.txt"]
    d = whole.sub("sub").sub("d")
    assert d.url == f"zip://sub/d::{path.as_uri()}" and d.list() == ["b.txt"]
    assert pickle.loads(pickle.dumps(d)).read_bytes("b.txt") == b"B"  # workers reopen the URL
    with Store(f"zip://sub::{path.as_uri()}") as s:  # a local archive stays writable
        s.write_bytes("c.txt", b"C")
    assert Store(path / "sub").list() == ["a.txt", "c.txt"]


def test_zip_behind_a_url_is_read_through_fsspec(monkeypatch):
    fs = fsspec.filesystem("memory")
    root = f"memory://zips-{uuid.uuid4().hex}"
    fs.pipe(f"{root}/a.zip", _zip_bytes({"sub/x.txt": b"x", "sub/y/z.txt": b"z", "top.txt": b"t"}))
    opened = []
    real = store_mod.ZipFileSystem
    monkeypatch.setattr(store_mod, "ZipFileSystem", lambda fo: opened.append(fo) or real(fo))
    for url in (f"{root}/a.zip/sub", f"zip://sub::{root}/a.zip"):
        s = Store(url)
        assert s.kind == "zip" and s.list() == ["x.txt"]
        assert s.list(recursive=True) == ["x.txt", "y/z.txt"]
        assert s.read_bytes("y/z.txt") == b"z" and s.exists("x.txt") and not s.exists("no")
        with s.open("x.txt") as f:
            assert f.read() == b"x"
        with pytest.raises(InputError, match="file not found"):
            s.read_bytes("missing.txt")
        with pytest.raises(OutputError, match="read-only"):
            s.write_bytes("new.txt", b"n")
    assert opened == [f"{root}/a.zip"]  # one reader per archive and process
    assert Store(f"{root}/none.zip").list() == []
