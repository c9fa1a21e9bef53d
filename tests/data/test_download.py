"""``cli.py data download`` against the loopback Alpaca server with the real alpaca-py client:
pagination, incremental re-runs, interruption and resume, rate limits, bad input."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from feeds.store import read_bars
from tests.data.conftest import KEY, REPO, SECRET, SYMBOLS, one_line_error, run_data, source_bars


def _dl(sim: object, out: Path, *args: str, symbols: str = "ACME,BOLT",
        start: str = "2025-10-01", end: str = "2025-10-31") -> subprocess.CompletedProcess[str]:
    return run_data("download", "--symbols", symbols, "--start", start, "--end", end,
                    "--data-url", sim.base_url, "--out", str(out), "--quiet",  # type: ignore
                    "--backoff", "0.01", "--max-wait", "0.5", *args)


def _requests(stdout: str) -> int:
    m = re.search(r"(\d+) bars in (\d+) request", stdout)
    assert m, stdout
    return int(m.group(2))


def _assert_complete(out: Path, symbols: tuple[str, ...] | list[str]) -> None:
    """Every symbol equals the server's bars exactly: no missing, no duplicate, no change."""
    for sym in symbols:
        got = read_bars(out / "1Min" / sym)
        want = source_bars(sym)
        assert got["timestamp"].is_unique
        pd.testing.assert_frame_equal(got, want, check_exact=True)


def _parts(out: Path, sym: str) -> list[Path]:
    return sorted((out / "1Min" / sym).glob("*.parquet"))


def test_download_paginates_and_matches_the_server(sim_clean: object, tmp_path: Path) -> None:
    proc = _dl(sim_clean, tmp_path, symbols=",".join(SYMBOLS))
    assert proc.returncode == 0, proc.stderr
    _assert_complete(tmp_path, SYMBOLS)
    # 6 symbols x ~1,950 bars a week exceed one 10,000-bar page: more requests than windows.
    windows = len(_parts(tmp_path, "ACME"))
    assert windows == 5
    assert _requests(proc.stdout) > windows
    meta = pq.read_schema(_parts(tmp_path, "ACME")[0]).metadata
    assert meta[b"ratchet.feed"] == b"iex"
    assert meta[b"ratchet.source"] == b"alpaca"
    assert "ACME 1Min: +8970 bars" in proc.stdout


def test_rerun_fetches_nothing_and_extension_fetches_only_the_rest(
        sim_clean: object, tmp_path: Path) -> None:
    first = _dl(sim_clean, tmp_path, end="2025-10-10")
    assert first.returncode == 0, first.stderr
    assert len(read_bars(tmp_path / "1Min" / "ACME")) == 8 * 390  # Oct 1-10: 8 sessions
    files = {p: p.stat().st_mtime_ns for p in _parts(tmp_path, "ACME")}

    again = _dl(sim_clean, tmp_path, end="2025-10-10")
    assert again.returncode == 0, again.stderr
    assert "ACME 1Min: up to date" in again.stdout
    assert _requests(again.stdout) == 0
    assert {p: p.stat().st_mtime_ns for p in _parts(tmp_path, "ACME")} == files

    more = _dl(sim_clean, tmp_path, end="2025-10-31")
    assert more.returncode == 0, more.stderr
    # Only Oct 13-31 (15 sessions) is new; nothing before it was fetched again.
    assert f"ACME 1Min: +{15 * 390} bars (2025-10-13 09:30" in more.stdout  # New York
    assert {p: p.stat().st_mtime_ns for p in files} == files
    _assert_complete(tmp_path, ("ACME", "BOLT"))


def test_server_failure_midway_keeps_finished_windows_and_rerun_resumes(
        sim_clean: object, tmp_path: Path) -> None:
    """A download that dies after N windows (persistent HTTP 500) leaves those windows valid
    on disk; the same command afterwards fetches only the rest, with no duplicates."""
    from brokers.alpaca.credentials import Credentials
    from brokers.alpaca.throttle import RateLimiter
    from feeds import download as dl
    from feeds.download_plan import TIMEFRAMES
    from ratchet.commands.data import parse_range

    sim = sim_clean
    limiter = RateLimiter(backoff=0.0, max_wait=0.0)
    client = dl.make_client(Credentials(KEY, SECRET, "test"), sim.base_url,  # type: ignore
                            limiter)
    tf = TIMEFRAMES["1Min"]
    now = pd.Timestamp.now(tz="UTC")
    t0, t1 = parse_range("2025-10-01", "2025-10-31", now)
    done: list[dl.Chunk] = []

    def break_after_two(chunk: dl.Chunk, bars: int) -> None:
        done.append(chunk)
        if len(done) == 2:
            sim.faults.server_error(500, times=-1, path="/v2/stocks/bars")  # type: ignore

    with pytest.raises(dl.DownloadFailed, match="re-run the same command"):
        dl.download(client, tmp_path, ["ACME", "BOLT"], tf, t0, t1, limiter=limiter,
                    retries=2, now=now, on_chunk=break_after_two)
    assert len(done) == 2
    for sym in ("ACME", "BOLT"):
        parts = _parts(tmp_path, sym)
        assert len(parts) == 2  # exactly the two finished windows, each a valid file
        saved = read_bars(tmp_path / "1Min" / sym)
        assert len(saved) == 2 * 5 * 390
        assert saved["timestamp"].max() < pd.Timestamp("2025-10-15", tz="America/New_York")
    assert not list(tmp_path.rglob("*.tmp"))

    sim.faults.clear()  # type: ignore[attr-defined]
    proc = _dl(sim, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "ACME 1Min: +5070 bars (2025-10-15 09:30" in proc.stdout  # 13 sessions left
    _assert_complete(tmp_path, ("ACME", "BOLT"))


def test_killed_download_leaves_no_broken_file_and_rerun_completes(
        sim_clean: object, tmp_path: Path) -> None:
    """SIGKILL in the middle of a (throttled) download: every file on disk is a valid part,
    and running the command again completes the data set exactly."""
    env = {**os.environ, "APCA_API_KEY_ID": KEY, "APCA_API_SECRET_KEY": SECRET,
           "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "cli.py", "data", "download", "--symbols", "ACME,BOLT",
           "--start", "2025-10-01", "--end", "2025-10-31", "--window-days", "1",
           "--rate-limit", "30", "--data-url", sim_clean.base_url,  # type: ignore
           "--max-wait", "0.5", "--out", str(tmp_path), "--quiet"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while len(_parts(tmp_path, "BOLT")) < 4:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "download made no progress"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    partial = {sym: _parts(tmp_path, sym) for sym in ("ACME", "BOLT")}
    assert 4 <= len(partial["BOLT"]) < 23  # killed midway (23 sessions, one per window)
    for parts in partial.values():
        for part in parts:
            assert len(read_bars(part)) == 390  # each part is whole: one session
    resumed = _dl(sim_clean, tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    _assert_complete(tmp_path, ("ACME", "BOLT"))
    assert not list(tmp_path.rglob(".*.tmp"))  # leftovers of the killed run were cleaned


def test_rate_limit_429_is_retried_and_reported(sim_clean: object, tmp_path: Path) -> None:
    sim_clean.faults.rate_limit(times=3, path="/v2/stocks/bars")  # type: ignore[attr-defined]
    proc = _dl(sim_clean, tmp_path, symbols="CRUX")
    assert proc.returncode == 0, proc.stderr
    assert "3 rate-limited" in proc.stdout
    _assert_complete(tmp_path, ("CRUX",))


def test_unknown_symbol_is_one_line_error_and_others_are_saved(
        sim_clean: object, tmp_path: Path) -> None:
    proc = _dl(sim_clean, tmp_path, symbols="ACME,ZZZZQ", end="2025-10-03")
    line = one_line_error(proc)
    assert "unknown symbol ZZZZQ" in line and "check the spelling" in line
    assert len(read_bars(tmp_path / "1Min" / "ACME")) == 3 * 390
    assert not (tmp_path / "1Min" / "ZZZZQ").exists()


def test_wrong_secret_is_one_line_error(sim_clean: object, tmp_path: Path) -> None:
    proc = run_data("download", "--symbols", "ACME", "--start", "2025-10-01", "--end",
                    "2025-10-02", "--data-url", sim_clean.base_url,  # type: ignore
                    "--out", str(tmp_path), "--quiet",
                    env={"APCA_API_SECRET_KEY": "wrong-secret"})
    line = one_line_error(proc)
    assert "HTTP 401" in line and "APCA_API_SECRET_KEY" in line
    assert "wrong-secret" not in proc.stdout + proc.stderr


def test_keys_file_and_corrupt_part_is_refetched(sim_clean: object, tmp_path: Path) -> None:
    keys = tmp_path / "alpaca.keys"
    keys.write_text(f"# paper keys\nAPCA_API_KEY_ID={KEY}\nAPCA_API_SECRET_KEY='{SECRET}'\n")
    out = tmp_path / "bars"
    args = ("download", "--symbols", "DYNA", "--start", "2025-10-01", "--end", "2025-10-31",
            "--data-url", sim_clean.base_url, "--out", str(out), "--quiet",  # type: ignore
            "--keys-file", str(keys))
    first = run_data(*args, keys=False)
    assert first.returncode == 0, first.stderr
    victim = _parts(out, "DYNA")[2]
    victim.write_bytes(victim.read_bytes()[:200])  # a disk error: a truncated file
    again = run_data(*args, keys=False)
    assert again.returncode == 0, again.stderr
    assert "DYNA 1Min: +1950 bars" in again.stdout  # only the broken week, fetched again
    assert (victim.parent / f".corrupt-{victim.name}").exists()
    _assert_complete(out, ("DYNA",))


def test_daily_download_stamps_new_york_midnight(sim_clean: object, tmp_path: Path) -> None:
    proc = _dl(sim_clean, tmp_path, "--timeframe", "1Day", symbols="ECHO")
    assert proc.returncode == 0, proc.stderr
    daily = read_bars(tmp_path / "1Day" / "ECHO")
    assert len(daily) == 23
    local = daily["timestamp"].dt.tz_convert("America/New_York")
    assert (local.dt.hour == 0).all() and (local.dt.minute == 0).all()
    minute = source_bars("ECHO")
    assert daily["volume"].sum() == pytest.approx(minute["volume"].sum())


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--start", "2025-10-31", "--end", "2025-10-01"], "is not before --end"),
        (["--start", "2025-13-01"], "--start '2025-13-01' is not a date"),
        (["--start", "yesterday-ish"], "use YYYY-MM-DD"),
        (["--start", "2025-10-01", "--timeframe", "2Min"], "--timeframe '2Min' is not supported"),
        (["--start", "2025-10-01", "--symbols", "AC$ME"], "'AC$ME' is not a ticker symbol"),
        (["--start", "2025-10-01", "--feed", "nasdaq"], "--feed 'nasdaq' is not valid"),
        (["--start", "2999-01-01"], "--start 2999-01-01 is in the future"),
        (["--start", "2025-10-01", "--out", "/tmp/nowhere/bars/1Min"], "is an interval folder"),
    ],
)
def test_bad_input_is_one_line_error(args: list[str], expected: str, tmp_path: Path) -> None:
    base = ["download", "--data-url", "http://127.0.0.1:9", "--out", str(tmp_path)]
    if "--symbols" not in args:
        base += ["--symbols", "ACME"]
    proc = run_data(*base, *args)
    line = one_line_error(proc)
    assert expected in line
    assert proc.returncode == 2
    assert not any(tmp_path.iterdir())


def test_missing_keys_name_the_environment_variables(tmp_path: Path) -> None:
    proc = run_data("download", "--symbols", "ACME", "--start", "2025-10-01",
                    "--out", str(tmp_path), keys=False)
    line = one_line_error(proc)
    assert "APCA_API_KEY_ID" in line and "APCA_API_SECRET_KEY" in line and "--keys-file" in line


def test_rate_limiter_honours_reset_and_backs_off() -> None:
    """Unit check of the pacing rules with a fake clock (no real sleeping)."""
    from brokers.alpaca.throttle import RateLimiter

    now = {"t": 1000.0}
    slept: list[float] = []

    def sleep(s: float) -> None:
        slept.append(s)
        now["t"] += s

    lim = RateLimiter(per_minute=60, backoff=0.5, max_wait=30, clock=lambda: now["t"],
                      wall=lambda: now["t"], sleep=sleep)
    for _ in range(6):  # the burst: a tenth of a minute's budget, no waiting
        lim.acquire()
    assert slept == []
    lim.acquire()  # then one request per second
    assert slept == [pytest.approx(1.0)]
    lim.observe(429, {"X-RateLimit-Reset": str(now["t"] + 7), "X-RateLimit-Remaining": "0"})
    lim.acquire()
    assert slept[-1] == pytest.approx(7.0)
    lim.observe(200, {"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": str(now["t"] + 500)})
    lim.acquire()
    assert slept[-1] == pytest.approx(30.0)  # capped by max_wait
    lim.observe(503, {})
    lim.observe(None, {})
    lim.acquire()
    assert slept[-1] == pytest.approx(1.0)  # back-off 0.5 s, doubled on the second failure
    lim.observe(200, {"X-RateLimit-Limit": "6"})
    assert lim.per_minute == 6  # a smaller server budget is followed
    assert lim.throttled == 1 and lim.errors == 2


def test_coverage_survives_in_part_metadata(sim_clean: object, tmp_path: Path) -> None:
    """Windows without bars (a weekend tail) are remembered so they are not asked again."""
    proc = _dl(sim_clean, tmp_path, symbols="FLUX", start="2025-10-27", end="2025-11-02")
    assert proc.returncode == 0, proc.stderr
    cover = []
    for part in _parts(tmp_path, "FLUX"):
        cover += json.loads(pq.read_schema(part).metadata[b"ratchet.coverage"])
    assert cover[0][0] == "2025-10-27T04:00:00+00:00"
    assert cover[-1][1] == "2025-11-03T05:00:00+00:00"  # through Sunday Nov 2, New York
    again = _dl(sim_clean, tmp_path, symbols="FLUX", start="2025-10-27", end="2025-11-02")
    assert _requests(again.stdout) == 0


def test_dates_and_the_recent_bar_cutoff() -> None:
    """Dates are New York days (end inclusive); bars younger than 15 minutes, and a daily bar
    before its session's extended hours end, are not recorded as covered."""
    from feeds.download_plan import TIMEFRAMES, complete_before
    from ratchet.commands.data import parse_range

    now = pd.Timestamp("2025-10-01 14:00", tz="America/New_York").tz_convert("UTC")
    t0, t1 = parse_range("2025-09-29", "2025-09-30", now)
    assert t0 == pd.Timestamp("2025-09-29 04:00", tz="UTC")
    assert t1 == pd.Timestamp("2025-10-01 04:00", tz="UTC")
    _, t_now = parse_range("2025-09-29", "2025-12-31", now)
    assert t_now == now  # clipped: no future bars
    naive, _ = parse_range("2025-09-29T09:30", None, now)
    assert naive == pd.Timestamp("2025-09-29 13:30", tz="UTC")  # naive times are New York
    ny = "America/New_York"
    assert complete_before(now, TIMEFRAMES["1Min"]) == pd.Timestamp("2025-10-01 13:45", tz=ny)
    assert complete_before(now, TIMEFRAMES["15Min"]) == pd.Timestamp("2025-10-01 13:45", tz=ny)
    assert complete_before(now, TIMEFRAMES["1Day"]) == pd.Timestamp("2025-10-01", tz=ny)
    late = pd.Timestamp("2025-10-01 20:30", tz=ny)
    assert complete_before(late, TIMEFRAMES["1Day"]) == pd.Timestamp("2025-10-02", tz=ny)


def test_compaction_merges_parts_keeping_bars_and_coverage(tmp_path: Path) -> None:
    """Many small parts are merged into one; later parts still win and coverage is kept."""
    from feeds.download_plan import TIMEFRAMES
    from feeds.parts import compact_dataset, inspect_dataset
    from feeds.parts import coverage_json as _coverage_json
    from feeds.store import append_bars

    tf = TIMEFRAMES["1Min"]
    bars = source_bars("ECHO")
    ds = tmp_path / "1Min" / "ECHO"
    days = bars["timestamp"].dt.tz_convert("America/New_York").dt.normalize()
    for seq, day in enumerate(sorted(days.unique())[:5], start=1):
        part = bars[days == day].copy()
        if seq == 5:  # a re-fetch of day 4's last bar with a corrected volume
            fix = bars[days == sorted(days.unique())[3]].tail(1).copy()
            fix["volume"] = 1.0
            part = pd.concat([fix, part])
        start = int(pd.Timestamp(day).tz_convert("UTC").value)
        cover = _coverage_json([(start, start + 86_400 * 10**9)])
        append_bars(ds, part, f"dl-{seq:06d}-x", metadata={"coverage": cover, "feed": "iex"})
    before = read_bars(ds)
    assert before["volume"].iloc[4 * 390 - 1] == 1.0
    cover_before = inspect_dataset(ds, tf).coverage
    assert compact_dataset(ds, tf, 6, {"feed": "iex"}, threshold=3)
    assert [p.name for p in _parts(tmp_path, "ECHO")] == ["dl-000006-merged.parquet"]
    pd.testing.assert_frame_equal(read_bars(ds), before)
    assert inspect_dataset(ds, tf).coverage == cover_before
    assert not compact_dataset(ds, tf, 7, {}, threshold=3)  # one part: nothing to do


def test_coverage_ends_at_the_last_bar_received_so_a_later_run_fetches_the_rest(
        tmp_path: Path) -> None:
    """Regression (issue 15): against the loopback server, whose bars exist only up to its
    clock, coverage was recorded up to --end, so a later run fetched nothing more."""
    from brokers.alpaca_sim.testing import SimServer
    from tests.data.conftest import BUNDLED

    with SimServer(BUNDLED, key=KEY, secret=SECRET, start="2025-10-06T14:00:00Z",
                   speed=0.0) as sim:
        first = _dl(sim, tmp_path, symbols="ACME", start="2025-10-06", end="2025-10-10")
        assert first.returncode == 0, first.stderr
        got = read_bars(tmp_path / "1Min" / "ACME")
        assert got["timestamp"].max() < pd.Timestamp("2025-10-06 14:00", tz="UTC")
        sim.advance(minutes=60)
        later = _dl(sim, tmp_path, symbols="ACME", start="2025-10-06", end="2025-10-10")
        assert later.returncode == 0, later.stderr
        assert "ACME 1Min: +60 bars (2025-10-06 10:00 .. 2025-10-06 10:59" in later.stdout
    assert read_bars(tmp_path / "1Min" / "ACME")["timestamp"].is_unique
