import re
from pathlib import Path

from hpasc.progress import track

SRC = Path(__file__).resolve().parents[1] / "src" / "hpasc"


def test_track_yields_every_item_drawn_or_not(capsys, monkeypatch):
    monkeypatch.setenv("FORCE_COLOR", "1")  # rich: stderr counts as a terminal, bars draw
    assert list(track(iter(range(5)), "x")) == [0, 1, 2, 3, 4]  # no len: an open-ended bar
    assert list(track(range(3), "x", enabled=False)) == [0, 1, 2]
    assert capsys.readouterr().out == ""  # bars draw on stderr: stdout is for results


def test_a_bar_inside_a_bar_does_not_fail(monkeypatch):
    monkeypatch.setenv("FORCE_COLOR", "1")
    # rich < 14 allows one live display per console; a runner's fields around a predictor's
    # batches must not raise LiveError
    seen = [list(track(range(3), "inner")) for _ in track(range(2), "outer")]
    assert seen == [[0, 1, 2], [0, 1, 2]]


def test_every_progress_bar_goes_through_hpasc_progress():
    pattern = re.compile(r"\btqdm\b|rich\.progress import [^\n]*\b(Progress|track)\b|rich\.live")
    offenders = [
        str(p.relative_to(SRC))
        for p in SRC.rglob("*.py")
        if p.name != "progress.py" and pattern.search(p.read_text())
    ]
    assert offenders == []


def test_no_terminal_no_bar_and_no_empty_lines(capsys, monkeypatch):
    monkeypatch.delenv("FORCE_COLOR", raising=False)
    monkeypatch.delenv("TTY_COMPATIBLE", raising=False)
    assert list(track(range(3), "x")) == [0, 1, 2]
    assert capsys.readouterr().err == ""  # a log gets no blank line per finished bar
