"""The per-field job runner: sharding, resume, error policy, worker failures, Ctrl-C."""

from __future__ import annotations

import multiprocessing
import os
import time
from functools import partial

import pytest

from hpasc.errors import HpascError, InputError
from hpasc.runner import (
    FieldError,
    parse_shard,
    read_errors_csv,
    run_fields,
    shard_ids,
)

IDS = [f"f{i:03d}" for i in range(23)]


def _square(field_id: str) -> int:
    return int(field_id[1:]) ** 2


def _fail_on(bad: str, field_id: str) -> int:
    if field_id == bad:
        raise ValueError(f"cannot read {field_id}_red.png:\nCRC error")
    return int(field_id[1:])


def _die_on(bad: str, field_id: str) -> int:
    if field_id == bad:
        os._exit(3)  # a worker killed mid-field (segfault, OOM killer)
    return int(field_id[1:])


def _slow(field_id: str) -> str:
    if field_id != IDS[0]:
        time.sleep(20)
    return field_id


def _no_children(timeout: float = 5.0) -> bool:
    # Terminated workers may be reaped by the pool's own thread a moment later.
    deadline = time.monotonic() + timeout
    while multiprocessing.active_children():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_parse_shard():
    assert parse_shard("0/4") == (0, 4)
    assert parse_shard("3/4") == (3, 4)
    assert parse_shard(None) is None
    for bad in ["4/4", "-1/2", "1", "a/b", "1/0", "1/2/3"]:
        with pytest.raises(InputError, match="--shard") as info:
            parse_shard(bad)
        assert "\n" not in str(info.value)


@pytest.mark.parametrize("n", [1, 2, 3, 7, 30])
def test_shards_disjoint_and_complete(n):
    shuffled = IDS[::-1]
    shards = [shard_ids(shuffled, i, n) for i in range(n)]
    union = [x for s in shards for x in s]
    assert sorted(union) == sorted(IDS)
    assert len(union) == len(set(union))
    sizes = [len(s) for s in shards]
    assert max(sizes) - min(sizes) <= 1


def test_run_sequential_with_skip_and_results():
    got = {}
    summary = run_fields(
        IDS,
        _square,
        skip=lambda i: i in {"f000", "f005"},
        on_result=got.__setitem__,
        progress=False,
    )
    assert (summary.done, summary.skipped, summary.failed) == (21, 2, 0)
    assert got == {i: int(i[1:]) ** 2 for i in IDS if i not in {"f000", "f005"}}


@pytest.mark.parametrize("workers", [1, 2])
def test_sharded_runs_cover_everything(workers):
    got = {}
    for i in range(3):
        run_fields(
            IDS, _square, shard=f"{i}/3", workers=workers, on_result=got.__setitem__, progress=False
        )
    assert got == {i: int(i[1:]) ** 2 for i in IDS}


@pytest.mark.parametrize("workers", [1, 2])
def test_stop_on_error_is_one_line_naming_field(workers):
    with pytest.raises(FieldError) as info:
        run_fields(IDS, partial(_fail_on, "f007"), workers=workers, progress=False)
    msg = str(info.value)
    assert isinstance(info.value, HpascError)
    assert "\n" not in msg
    assert msg.startswith("field f007: ValueError: cannot read f007_red.png")
    assert "CRC error" in msg
    assert info.value.field_id == "f007"


@pytest.mark.parametrize("workers", [1, 2])
def test_skip_on_error_writes_errors_csv(tmp_path, workers):
    errors = tmp_path / "out" / "errors.csv"
    got = {}
    summary = run_fields(
        IDS,
        partial(_fail_on, "f007"),
        workers=workers,
        on_error="skip",
        errors_csv=errors,
        on_result=got.__setitem__,
        progress=False,
    )
    assert (summary.done, summary.failed) == (22, 1)
    assert summary.errors[0][0] == "f007"
    assert "f007" not in got and len(got) == 22
    rows = read_errors_csv(errors)
    assert rows == summary.errors
    assert errors.read_text().splitlines()[0] == "id,error"
    # A re-run in which the field succeeds removes its row; rows of other fields stay.
    errors.write_text(errors.read_text() + "zzz,old failure\n")
    summary = run_fields(["f007"], _square, on_error="skip", errors_csv=errors, progress=False)
    assert summary.failed == 0
    assert read_errors_csv(errors) == [("zzz", "old failure")]


def test_errors_csv_not_created_without_failures(tmp_path):
    run_fields(IDS, _square, on_error="skip", errors_csv=tmp_path / "errors.csv", progress=False)
    assert not (tmp_path / "errors.csv").exists()


def test_failure_in_on_result_counts_as_field_failure():
    def on_result(field_id, value):
        if field_id == "f002":
            raise OSError("disk full")

    summary = run_fields(IDS, _square, on_result=on_result, on_error="skip", progress=False)
    assert summary.failed == 1
    assert summary.errors == [("f002", "OSError: disk full")]


def test_dead_worker_is_not_silent():
    with pytest.raises(FieldError, match="worker process died"):
        run_fields(IDS, partial(_die_on, "f004"), workers=2, progress=False)
    got = {}
    summary = run_fields(
        IDS,
        partial(_die_on, "f004"),
        workers=2,
        on_error="skip",
        on_result=got.__setitem__,
        progress=False,
    )
    # The dead worker's fields fail (named), a fresh pool finishes the others.
    assert summary.failed >= 1
    assert "f004" in {fid for fid, _ in summary.errors}
    assert summary.done + summary.failed == len(IDS)
    assert set(got) | {fid for fid, _ in summary.errors} == set(IDS)
    assert _no_children()


def test_interrupt_stops_pool_quickly():
    def on_result(field_id, value):
        raise KeyboardInterrupt

    start = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        run_fields(IDS, _slow, workers=2, on_result=on_result, progress=False)
    assert time.monotonic() - start < 10
    assert _no_children()


def test_bad_arguments():
    with pytest.raises(ValueError, match="on_error"):
        run_fields(IDS, _square, on_error="ignore")
    with pytest.raises(ValueError, match="workers"):
        run_fields(IDS, _square, workers=0)
