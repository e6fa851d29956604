"""A demo is sized for the machine: more rows only where an index build would not outlast the noise."""

from __future__ import annotations

import pytest

from zdlab import calibrate


@pytest.mark.parametrize(("build_ms", "noise", "expected"), [
    (1000.0, 50.0, 1.0),                          # 20x the noise: the notebook's size
    (100.0, 50.0, calibrate.VISIBLE_FACTOR / 2),  # 2x the noise: twice the rows make it 4x
    (10.0, 50.0, calibrate.MAX_GROWTH),           # a very fast machine: capped
    (0.0, 50.0, calibrate.MAX_GROWTH),
])
def test_growth_makes_the_build_last_the_visible_factor_times_the_noise(build_ms, noise, expected):
    assert calibrate.growth(build_ms, noise) == pytest.approx(expected)


def test_seed_visible_measures_this_machine_and_prints_the_size(make_sandbox, capsys, monkeypatch):
    box = make_sandbox("cal")
    monkeypatch.delenv("ZDLAB_DEMO_SCALE", raising=False)
    cal = calibrate.seed_visible(box, 20_000)
    out = capsys.readouterr().out
    assert cal.build_ms and cal.build_ms > 0 and cal.noise_ms and cal.noise_ms > 0
    factor = calibrate.growth(cal.build_ms, cal.noise_ms)
    assert cal.rows == (20_000 if factor <= 1 else round(20_000 * factor, -3))
    with box.connect("check") as conn:
        users = conn.execute("SELECT count(*) FROM users").fetchone()[0]
        leftover = conn.execute("SELECT to_regclass('zdlab_calibrate_idx')").fetchone()[0]
    assert users >= cal.rows and leftover is None  # the traffic may have signed a few up
    assert out.startswith(f"demo size: {cal.rows:,} rows") and f"{cal.noise_ms:,.0f} ms" in out


def test_an_explicit_demo_scale_is_not_calibrated(make_sandbox, capsys, monkeypatch):
    box = make_sandbox("cal")
    monkeypatch.setenv("ZDLAB_DEMO_SCALE", "0.5")
    cal = calibrate.seed_visible(box, 20_000)
    assert cal.rows == 10_000 and cal.build_ms is None
    assert "no calibration" in capsys.readouterr().out
