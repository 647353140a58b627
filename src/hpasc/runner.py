"""The per-field job runner behind every data verb (resize, segment, crop, ...).

:func:`run_fields` applies ``fn(field_id)`` to every field id, in this process or in a pool of
worker processes, with a progress bar, resume (``skip``), sharding (``--shard i/n``) and an
error policy. A failure is never silent: it either stops the run with one line naming the field
(``on_error="stop"``) or is counted, reported in the summary and written to ``errors.csv``
(``on_error="skip"``). A worker process that dies (killed, out of memory) is a failure of the
fields it was holding.

``fn`` writes its own outputs atomically, or returns a value that ``on_result(field_id, value)``
handles in the main process (for outputs that only one process may write, e.g. a zip archive).

Sharding splits the **sorted** ids round-robin: shard ``i`` of ``n`` holds ``sorted(ids)[i::n]``.
The split is disjoint and complete for any ``n`` and balanced to within one field; every shard
must see the same id list (the same input set), which holds when all ranks read the same store.

Every output set remembers how it was made: :func:`guard_output` keeps a manifest
(``.hpasc-output.json``: the verb, the parameters that shape its items and a fingerprint of each
input) in the output store. A rerun with other parameters or other inputs refuses with one line
unless ``overwrite``, which first removes the items it is about to redo; the same parameters and
inputs resume (finished fields are skipped). Zip outputs are committed every
``HPASC_ZIP_COMMIT_SECONDS`` (default 30) so that a killed run resumes too. For tests of that,
``HPASC_TEST_KILL_AFTER=k`` makes the process SIGKILL itself after ``k`` finished fields.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import multiprocessing
import os
import signal
import sys
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from rich.progress import MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from hpasc.errors import HpascError, InputError, OutputError
from hpasc.io.atomic import atomic_write
from hpasc.io.store import MANIFEST_NAME, Store
from hpasc.progress import bar as progress_bar

OnError = Literal["stop", "skip"]
_ERRORS_NAME = "errors.csv"
# Testing hook: the process kills itself (SIGKILL, no clean-up) after this many finished fields.
KILL_AFTER_ENV = "HPASC_TEST_KILL_AFTER"
ZIP_COMMIT_ENV = "HPASC_ZIP_COMMIT_SECONDS"


class FieldError(HpascError):
    """Processing one field failed; ``field_id`` names it and ``__cause__`` is the original error."""

    def __init__(self, field_id: str, message: str):
        super().__init__(f"field {field_id}: {message}")
        self.field_id = field_id


@dataclass
class RunSummary:
    """What a run did: counts of fields done, skipped (already present) and failed."""

    done: int = 0
    skipped: int = 0
    failed: int = 0
    errors: list[tuple[str, str]] = field(default_factory=list)

    def __str__(self) -> str:
        return f"{self.done} done, {self.skipped} skipped, {self.failed} failed"


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """Parse ``"i/n"`` (0-based ``i`` < ``n``) into ``(i, n)``; ``None`` or ``""`` → ``None``.

    Raises :class:`~hpasc.errors.InputError` with a one-line message for malformed text.
    """
    if text is None or text == "":
        return None
    parts = str(text).split("/")
    try:
        if len(parts) != 2:
            raise ValueError
        i, n = int(parts[0]), int(parts[1])
    except ValueError:
        raise InputError(f"bad --shard '{text}': expected i/n, e.g. 0/4 (0-based i < n)") from None
    if n < 1 or not 0 <= i < n:
        raise InputError(f"bad --shard '{text}': need 0 <= i < n and n >= 1, e.g. 0/4")
    return i, n


def shard_ids(ids: Iterable[str], i: int, n: int) -> list[str]:
    """Shard ``i`` of ``n``: ``sorted(ids)[i::n]`` (disjoint, complete, balanced)."""
    if n < 1 or not 0 <= i < n:
        raise ValueError(f"shard index must satisfy 0 <= i < n, got i={i}, n={n}")
    return sorted(ids)[i::n]


def _one_line(exc: BaseException) -> str:
    """An error as one line: HpascError messages as they are, others prefixed by their type."""
    text = " ".join(str(exc).split())
    if isinstance(exc, HpascError):
        return text or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def read_errors_csv(target: Any) -> list[tuple[str, str]]:
    """The ``id,error`` rows of an errors file (local path or a store's ``errors.csv``)."""
    data = _read_target(target)
    if data is None:
        return []
    rows = list(csv.reader(io.StringIO(data.decode("utf-8"))))
    return [(r[0], r[1]) for r in rows[1:] if len(r) >= 2]


def _read_target(target: Any) -> bytes | None:
    if isinstance(target, str | os.PathLike):
        path = Path(target)
        return path.read_bytes() if path.exists() else None
    return target.read_bytes(_ERRORS_NAME) if target.exists(_ERRORS_NAME) else None


def _write_errors(target: Any, attempted: set[str], errors: list[tuple[str, str]]) -> None:
    """Rewrite the errors file: keep old rows of fields not attempted now, add this run's rows.

    A field that failed before and succeeds on a re-run therefore leaves the file.
    """
    old = [row for row in read_errors_csv(target) if row[0] not in attempted]
    rows = old + errors
    if not rows and _read_target(target) is None:
        return
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["id", "error"])
    writer.writerows(rows)
    data = buf.getvalue().encode("utf-8")
    if isinstance(target, str | os.PathLike):
        atomic_write(target, data)
    else:
        target.write_bytes(_ERRORS_NAME, data)


def _worker_init(initializer: Callable[[], None] | None) -> None:
    # Ctrl-C goes to the whole process group; only the main process reacts (it stops the pool).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if initializer is not None:
        initializer()


def _context() -> multiprocessing.context.BaseContext:
    # fork: workers inherit loaded modules (fast start); elsewhere the platform default.
    return multiprocessing.get_context("fork" if sys.platform.startswith("linux") else None)


def _kill_pool(pool: ProcessPoolExecutor) -> None:
    """Stop a pool now: cancel queued work and terminate the workers (Ctrl-C)."""
    processes = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for proc in processes:
        if proc.is_alive():
            proc.terminate()
    for proc in processes:
        proc.join(timeout=5)


class _Progress:
    """A rich progress bar with done/skipped/failed counts (or nothing when disabled)."""

    def __init__(self, total: int, desc: str, enabled: bool):
        self._bar = None
        self.counts = {"done": 0, "skipped": 0, "failed": 0}
        if not enabled:
            return
        self._bar = progress_bar(
            MofNCompleteColumn(),
            TextColumn("{task.fields[counts]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            transient=False,
        )
        self._task = self._bar.add_task(desc or "fields", total=total, counts=self._text())

    def _text(self) -> str:
        c = self.counts
        return f"done {c['done']} skipped {c['skipped']} failed {c['failed']}"

    def __enter__(self) -> _Progress:
        if self._bar is not None:
            self._bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()

    def add(self, kind: str, n: int = 1) -> None:
        self.counts[kind] += n
        if self._bar is not None and n:
            self._bar.update(self._task, advance=n, counts=self._text())


def run_fields(
    ids: Iterable[str],
    fn: Callable[[str], Any],
    *,
    workers: int = 1,
    shard: tuple[int, int] | str | None = None,
    skip: Callable[[str], bool] | None = None,
    on_error: OnError = "stop",
    errors_csv: Any = None,
    desc: str = "",
    initializer: Callable[[], None] | None = None,
    on_result: Callable[[str, Any], None] | None = None,
    progress: bool = True,
) -> RunSummary:
    """Run ``fn(field_id)`` for every field id, in order of sorted ids.

    Parameters
    ----------
    ids : iterable of str
        Field ids (duplicates are ignored).
    fn : callable
        ``fn(field_id) -> value``. With ``workers > 1`` it runs in worker processes and must be
        picklable (a module-level function or a :func:`functools.partial` of one).
    workers : int
        ``1`` runs in this process; ``N > 1`` uses a pool of N processes (fork on Linux).
    shard : (i, n) or "i/n", optional
        Process only shard ``i`` of ``n`` (:func:`shard_ids`).
    skip : callable, optional
        ``skip(field_id) -> bool``, called in this process; true → counted as skipped (resume).
    on_error : {"stop", "skip"}
        ``"stop"``: the first failure stops the pool and raises :class:`FieldError` (one line,
        naming the field and the original error). ``"skip"``: failures are counted, kept in
        ``RunSummary.errors`` and written to ``errors_csv``; the run goes on.
    errors_csv : path or store, optional
        Where ``id,error`` rows go with ``on_error="skip"``: a local file path, or a store (its
        ``errors.csv``). Rows of fields attempted in this run replace older rows.
    desc : str
        Label of the progress bar.
    initializer : callable, optional
        Called once in each worker process (and once here when ``workers == 1``).
    on_result : callable, optional
        ``on_result(field_id, value)`` in this process for every field ``fn`` finished; an
        exception there counts as that field's failure.
    progress : bool
        Show a progress bar on stderr.

    Returns
    -------
    RunSummary
    """
    if on_error not in ("stop", "skip"):
        raise ValueError(f"on_error must be 'stop' or 'skip', got {on_error!r}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    todo = sorted(set(ids))
    if isinstance(shard, str):
        shard = parse_shard(shard)
    if shard is not None:
        todo = shard_ids(todo, *shard)

    summary = RunSummary()
    kill_after = int(os.environ.get(KILL_AFTER_ENV) or 0)
    attempted: set[str] = set()
    bar = _Progress(len(todo), desc, progress)

    def finish(field_id: str, value: Any = None, exc: BaseException | None = None) -> None:
        attempted.add(field_id)
        if exc is None and on_result is not None:
            try:
                on_result(field_id, value)
            except Exception as err:
                exc = err
        if exc is None:
            summary.done += 1
            bar.add("done")
            if kill_after and summary.done >= kill_after:
                os.kill(os.getpid(), signal.SIGKILL)  # the testing hook: die as a crash does
            return
        summary.failed += 1
        bar.add("failed")
        message = _one_line(exc)
        if on_error == "stop":
            raise FieldError(field_id, message) from exc
        summary.errors.append((field_id, message))

    pending_ids = []
    for field_id in todo:
        if skip is not None and skip(field_id):
            summary.skipped += 1
        else:
            pending_ids.append(field_id)
    try:
        with bar:
            bar.add("skipped", summary.skipped)
            if workers == 1 or len(pending_ids) <= 1:
                if initializer is not None and pending_ids:
                    initializer()
                for field_id in pending_ids:
                    try:
                        value = fn(field_id)
                    except Exception as exc:
                        finish(field_id, exc=exc)
                    else:
                        finish(field_id, value)
            else:
                _run_pool(pending_ids, fn, workers, initializer, finish)
    finally:
        if errors_csv is not None and on_error == "skip":
            _write_errors(errors_csv, attempted, summary.errors)
    return summary


def _new_pool(workers: int, initializer: Callable[[], None] | None) -> ProcessPoolExecutor:
    return ProcessPoolExecutor(
        workers, mp_context=_context(), initializer=_worker_init, initargs=(initializer,)
    )


def _run_pool(
    ids: Sequence[str],
    fn: Callable[[str], Any],
    workers: int,
    initializer: Callable[[], None] | None,
    finish: Callable[..., None],
) -> None:
    """Feed ``ids`` to a process pool, at most ``2 * workers`` in flight, in sorted order."""
    queue = list(reversed(ids))
    pool = _new_pool(workers, initializer)
    running: dict[Future, str] = {}
    try:
        while queue or running:
            while queue and len(running) < 2 * workers:
                field_id = queue.pop()
                running[pool.submit(fn, field_id)] = field_id
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            broken = any(isinstance(f.exception(), BrokenProcessPool) for f in finished)
            for fut in sorted(finished, key=running.__getitem__):
                if not isinstance(fut.exception(), BrokenProcessPool):
                    field_id = running.pop(fut)
                    exc = fut.exception()
                    finish(field_id, None if exc else fut.result(), exc)
            if broken:
                # The pool is unusable and we cannot tell which field killed the worker: every
                # field it held fails, naming the others, and a fresh pool takes the rest.
                held = sorted(running.values())
                running.clear()
                _kill_pool(pool)
                pool = _new_pool(workers, initializer)
                message = (
                    "a worker process died (killed or out of memory) while holding this field "
                    f"and {len(held) - 1} other(s): {', '.join(held)}"
                )
                for field_id in held:
                    finish(field_id, exc=BrokenProcessPool(message))
    except FieldError:
        # Let the fields already running finish (their outputs are atomic); start no others.
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    except BaseException:
        _kill_pool(pool)
        raise
    pool.shutdown(wait=True)


# --------------------------------------------------------------------------- provenance


def input_fingerprint(store: Any) -> str:
    """A cheap fingerprint of an input store: its file names and, for local files, their
    sizes and modification times (no content is read).

    Hidden files (manifests, temporaries) and ``errors.csv`` are left out: they change when a
    verb resumes, its items do not.
    """
    src = store if isinstance(store, Store) else Store(os.fspath(store))
    entries: list[list[Any]] = []
    for name in src.list(recursive=True):
        base = name.rsplit("/", 1)[-1]
        if base.startswith(".") or base == _ERRORS_NAME:
            continue
        path = src.local_path(name)
        if path is None:
            entries.append([name])
        else:
            st = path.stat()
            entries.append([name, st.st_size, int(st.st_mtime)])
    return hashlib.sha256(json.dumps(entries).encode()).hexdigest()[:16]


def _plain(value: Any) -> Any:
    """Parameters as JSON types (tuples → lists, paths → strings), as they read back."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def _option(key: str, value: Any) -> str:
    return f"--{key.replace('_', '-')} {'none' if value is None else value}"


def _difference(old: dict[str, Any], new: dict[str, Any], locations: dict[str, str]) -> str:
    """How an output's manifest differs from this run's, as "made …" words ('' if equal)."""
    if old.get("kind") != new["kind"]:
        return f"by `hpasc {old.get('kind')}`, not `hpasc {new['kind']}`"
    was, now = old.get("params") or {}, new["params"]
    keys = [k for k in sorted(set(was) | set(now)) if was.get(k) != now.get(k)]
    if keys:
        before = ", ".join(_option(k, was.get(k)) for k in keys)
        after = ", ".join(_option(k, now.get(k)) for k in keys)
        return f"with {before} (this run: {after})"
    was, now = old.get("inputs") or {}, new["inputs"]
    changed = [k for k in sorted(set(was) | set(now)) if was.get(k) != now.get(k)]
    if changed:
        what = ", ".join(f"{k} ({locations.get(k, '-')})" for k in changed)
        return f"from other input files: {what} changed since (files added, removed or modified)"
    return ""


def read_manifest(out: Any) -> dict[str, Any] | None:
    """The manifest of an output store (how it was made), or None when it has none."""
    if not out.exists(MANIFEST_NAME):
        return None
    try:
        doc = json.loads(out.read_bytes(MANIFEST_NAME))
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


def guard_output(
    out: Any,
    kind: str,
    params: dict[str, Any],
    inputs: dict[str, Any],
    ids: Iterable[str],
    names: Callable[[str], list[str]],
    *,
    overwrite: bool = False,
    fix: str = "pass --overwrite or another OUT",
) -> Callable[[str], bool]:
    """Check that ``out`` holds items made as this run makes them; return the resume test.

    Parameters
    ----------
    out : Store
        The output store.
    kind : str
        The verb (``"crop"``, ``"resize images"``, ...).
    params : dict
        Every parameter that shapes the items (sizes, methods, options); JSON-able values.
        A new parameter is recorded by adding it here.
    inputs : dict
        Input name (``"images"``, ``"masks"``) → store or location (None: not used); each is
        recorded by :func:`input_fingerprint`.
    ids : iterable of str
        The fields this run writes.
    names : callable
        ``names(field_id)``: the output names of one field.
    overwrite : bool
        Redo every field: the items of ``ids`` already present are removed first, so a run
        killed half way never leaves old items that a resume would take for new ones.
    fix : str
        The way out that a refusal names (the verb's own option).

    Returns
    -------
    callable
        ``skip(field_id)`` for :func:`run_fields`: the field's outputs all exist.

    Raises
    ------
    OutputError
        Without ``overwrite``, when ``out`` was made with other parameters, from other inputs,
        by another verb, or holds this verb's items but no manifest.
    """
    made = {
        "kind": kind,
        "params": _plain(params),
        "inputs": {k: input_fingerprint(v) for k, v in inputs.items() if v is not None},
    }
    locations = {k: str(getattr(v, "url", v)) for k, v in inputs.items() if v is not None}
    out.remove_dead_temporaries()
    old = read_manifest(out)
    present = set(out.list(recursive=True))
    ids = sorted(set(ids))
    mine = [n for i in ids for n in names(i) if n in present]
    if overwrite:
        for name in mine:
            out.remove(name)
        present.difference_update(mine)
    elif old is None and mine:
        raise OutputError(
            f"{out} already holds {len(mine)} output file(s) but no record of how they were "
            f"made ({MANIFEST_NAME}); {fix}"
        )
    elif old is not None:
        problem = _difference(old, made, locations)
        if problem:
            raise OutputError(f"{out} was made {problem}; {fix}")
    if old != made:
        out.write_bytes(MANIFEST_NAME, json.dumps(made, indent=1, sort_keys=True).encode())
    out.commit_every(float(os.environ.get(ZIP_COMMIT_ENV, "30")))
    return lambda field_id: all(n in present for n in names(field_id))
