"""Zip store reads: the previous hand-written zipfile reader against the fsspec ``ZipFileSystem``.

Two archives, written by ``Store``: ~200 small channel PNGs and ``.crops`` records. For each, the
time to list the store and read every member, best of ``--repeat`` runs, in this process:

* ``old``: the read path hpasc had before it moved to fsspec (implemented here as it was: one
  cached ``zipfile.ZipFile`` per archive, re-validated by ``os.stat`` and taken under a lock
  on every read, ``ZipFile.read`` per member), behind the same ``Store`` front end;
* ``Store``: ``Store("x.zip")`` (reads through ``fsspec.implementations.zip.ZipFileSystem``);
* ``zip::file://``: the same archive through a chained URL;
* ``zip::memory://``: the archive's bytes in fsspec's memory filesystem.

Every variant's bytes are checked identical to the old reader's.

    python benchmarks/bench_store.py [--pngs 200] [--records 40] [--repeat 7]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
import uuid
import zipfile
from collections.abc import Callable
from pathlib import Path

import cv2
import fsspec
import numpy as np

from hpasc.io.cropset import encode_record
from hpasc.io.store import Store, clean_name
from machine import cpu_description


class OldZipBackend:
    """The previous store's zip read path: cached ZipFile, stat-checked, read under a lock.

    Plugged in behind the same ``Store`` front end, so both sides pay for name checks alike.
    """

    kind = "zip"

    def __init__(self, path: Path):
        self.path = path
        self.txn_lock = threading.RLock()  # the old backend read under its transaction lock
        self.cache_lock = threading.Lock()
        self.cache: tuple[tuple[int, int, int], zipfile.ZipFile] | None = None

    def _zip(self) -> zipfile.ZipFile:
        st = os.stat(self.path)
        sig = (st.st_ino, st.st_size, st.st_mtime_ns)
        with self.cache_lock:
            if self.cache is None or self.cache[0] != sig:
                self.cache = (sig, zipfile.ZipFile(self.path))
            return self.cache[1]

    def location(self, path: str) -> str:
        return f"{self.path}/{path}"

    def list(self, prefix: str, recursive: bool) -> list[str]:
        with self.txn_lock:
            names = [n for n in self._zip().namelist() if not n.endswith("/")]
        return [n for n in names if clean_name(n) == n and (recursive or "/" not in n)]

    def read_bytes(self, path: str) -> bytes:
        with self.txn_lock:
            zf = self._zip()
            if path not in zf.NameToInfo:
                raise FileNotFoundError(path)
            return zf.read(path)


def make_pngs(path: Path, n: int, side: int = 64) -> None:
    rng = np.random.default_rng(0)
    with Store(path) as s:
        for i in range(n):
            img = cv2.GaussianBlur(rng.integers(0, 255, (side, side), np.uint8), (0, 0), 2)
            s.write_bytes(f"f{i:04d}_green.png", cv2.imencode(".png", img)[1].tobytes())


def make_records(path: Path, n: int, cells: int = 12, side: int = 64) -> None:
    rng = np.random.default_rng(1)
    with Store(path) as s:
        for i in range(n):
            crops = cv2.GaussianBlur(
                rng.integers(0, 255, (cells * 8, side, side), np.uint8).transpose(1, 2, 0),
                (0, 0),
                1.5,
            ).transpose(2, 0, 1)
            crops = np.ascontiguousarray(crops.reshape(cells, 8, side, side))
            ids = np.arange(1, cells + 1, dtype=np.int32)
            s.write_bytes(f"f{i:04d}.crops", encode_record(crops, ids))


def read_all(store) -> int:
    return sum(len(store.read_bytes(n)) for n in store.list())


def best_of(repeat: int, fn: Callable[[], object]) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def variants(path: Path) -> dict[str, Callable[[], object]]:
    mem = f"memory://bench-{uuid.uuid4().hex}/{path.name}"
    fsspec.filesystem("memory").pipe_file(mem, path.read_bytes())
    # Each variant gets its store once, as a step does, then reads through it.
    old = Store._view(str(path), OldZipBackend(path), "")
    new, chained, remote = Store(path), Store(f"zip::{path.as_uri()}"), Store(f"zip::{mem}")
    expected = {n: old.read_bytes(n) for n in old.list()}
    for s in (new, chained, remote):
        assert {n: s.read_bytes(n) for n in s.list()} == expected, s
    return {
        "old": lambda: read_all(old),
        "Store": lambda: read_all(new),
        "zip::file://": lambda: read_all(chained),
        "zip::memory://": lambda: read_all(remote),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pngs", type=int, default=200)
    ap.add_argument("--records", type=int, default=40)
    ap.add_argument("--repeat", type=int, default=7)
    args = ap.parse_args()
    print(f"machine: {cpu_description()}")
    with tempfile.TemporaryDirectory() as tmp:
        pngs, records = Path(tmp) / "pngs.zip", Path(tmp) / "records.zip"
        make_pngs(pngs, args.pngs)
        make_records(records, args.records)
        print("| archive | members | MiB | reader | ms (list + read all) | µs/member | vs old |")
        print("|---|---:|---:|---|---:|---:|---:|")
        for path, count in ((pngs, args.pngs), (records, args.records)):
            mib = path.stat().st_size / 2**20
            timed = {k: best_of(args.repeat, fn) for k, fn in variants(path).items()}
            for name, sec in timed.items():
                print(
                    f"| {path.name} | {count} | {mib:.1f} | {name} | {sec * 1e3:.2f} | "
                    f"{sec / count * 1e6:.0f} | {sec / timed['old']:.2f}× |"
                )


if __name__ == "__main__":
    main()
