"""Soak harness (evaluation.soak): a short run on the fake artifacts must record RSS and emit only safe actions."""

from __future__ import annotations

import json

from evaluation.soak import main, rss_kb, soak
from tests.fake_artifacts import cached_fake_artifacts


def test_short_soak_records_rss_and_has_no_bad_actions():
    s = soak(cached_fake_artifacts(), ticks=300, gate="drift", rss_every=100, progress=False, threads=1)
    assert s["ticks"] == 300 and not s["truncated"]
    assert s["errors"] == 0, s["error_examples"]
    assert s["bad_actions"] == 0, s["bad_action_examples"]
    assert s["counters"]["ticks"] == 300 and s["counters"]["faults"] == 0
    assert s["episodes"] >= 5  # 60-tick episodes back to back
    assert [x["tick"] for x in s["rss_samples"]] == [0, 100, 200, 300]
    if rss_kb() is not None:  # Linux
        assert all(x["rss_kb"] > 0 for x in s["rss_samples"])
        assert s["rss_kb"]["start"] > 0 and s["rss_kb"]["end"] > 0
    assert s["ticks_per_s"] > 0 and s["tick_ms"]["p50"] > 0


def test_soak_cli_writes_json(tmp_path):
    out = tmp_path / "soak.json"
    rc = main(["--artifacts", str(cached_fake_artifacts()), "--ticks", "120", "--gate", "consistency",
               "--rss-every", "50", "--out", str(out), "--no-progress", "--threads", "1"])
    assert rc == 0
    s = json.loads(out.read_text())
    assert s["ticks"] == 120 and s["bad_actions"] == 0 and s["errors"] == 0
    assert s["gate"].startswith("consistency") and s["counters"]["delta_passes"] > 0
    assert [x["tick"] for x in s["rss_samples"]] == [0, 50, 100, 120]


def test_soak_time_cap_truncates():
    s = soak(cached_fake_artifacts(), ticks=10_000_000, gate="interval:3", max_seconds=0.5, progress=False, threads=1)
    assert s["truncated"] and 0 < s["ticks"] < 10_000_000
    assert s["bad_actions"] == 0 and s["errors"] == 0


def test_a_soak_stopped_before_its_first_tick_still_prints_its_summary():
    from evaluation.soak import format_summary

    s = soak(cached_fake_artifacts(), ticks=100, gate="interval:3", max_seconds=1e-12, progress=False, threads=1)
    assert s["ticks"] == 0 and s["tick_ms"]["p50"] is None
    assert "tick ms: mean ?  p50 ?  p99 ?  max ?" in format_summary(s)
