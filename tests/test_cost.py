"""zdlab.cost: the printed figures follow from the measured numbers, by the stated arithmetic."""

from __future__ import annotations

import re

import pytest

from zdlab import cost


def test_the_line_fits_exact_points():
    g = cost.fit_growth([(300_000, 0.35), (100_000, 0.15), (200_000, 0.25)])
    assert g.rows == (100_000, 200_000, 300_000)
    assert g.slope_s_per_row == pytest.approx(1e-6)
    assert g.intercept_s == pytest.approx(0.05)
    assert g.seconds_at(1_000_000) == pytest.approx(1.05)


def test_one_size_is_not_a_growth():
    with pytest.raises(ValueError):
        cost.fit_growth([(1000, 0.1), (1000, 0.2)])


def test_the_figures_and_their_printout():
    g = cost.fit_growth([(100_000, 0.1), (200_000, 0.2)])  # 1 s per million rows
    c = cost.downtime_cost(stall_s=0.5, measured_rows=200_000, growth=g, rows=50_200_000, requests_per_s=200,
                           client_timeout_s=30)
    assert c.outage_s == pytest.approx(50.5)  # 0.5 s + 1e-6 s/row x 50,000,000 rows
    assert c.requests_blocked == pytest.approx(10_100)
    assert c.requests_failed == pytest.approx(200 * 20.5)
    assert c.budget_s == pytest.approx(43.2 * 60)
    assert c.budget_share == pytest.approx(50.5 / 2592)
    text = str(c)
    # Every printed figure is the one computed, with its inputs.
    assert "0.500 s measured at 200,000 rows + 1.000 s per million rows x 50,000,000 more rows = 50.5 s" in text
    assert "200/s x 50.5 s = 10,100" in text
    assert "200/s x max(0, 50.5 s - 30.0 s timeout) = 4,100" in text
    assert "43.2 min" in text and "50.5 s / 2,592 s = 1.9% of it" in text


def test_printed_numbers_recompute_from_their_inputs():
    g = cost.fit_growth([(20_000, 0.031), (60_000, 0.074), (120_000, 0.151)])
    c = cost.downtime_cost(stall_s=0.273, measured_rows=200_000, growth=g, rows=80_000_000, requests_per_s=350)
    first = c.lines()[0]
    stall, rows, per_million, extra, outage = (float(x.replace(",", "")) for x in re.findall(
        r"([\d,.]+) s measured at ([\d,]+) rows \+ ([\d.]+) s per million rows x ([\d,]+) more rows = ([\d,.]+) s",
        first)[0])
    assert outage == pytest.approx(stall + per_million / 1e6 * extra, abs=0.06)  # rounding of the printout
    assert c.requests_failed == 0 and "none fail, all wait" in str(c)


def test_a_smaller_table_never_gives_a_negative_outage():
    g = cost.fit_growth([(1, 0.0), (2, 1.0)])
    assert cost.downtime_cost(stall_s=0.1, measured_rows=100, growth=g, rows=0, requests_per_s=1).outage_s == 0


@pytest.mark.parametrize("kw", [{"rows": -1}, {"requests_per_s": -1}, {"slo": 1.5}])
def test_bad_input_is_refused(kw):
    g = cost.fit_growth([(1, 0.0), (2, 1.0)])
    args = {"stall_s": 0.1, "measured_rows": 10, "growth": g, "rows": 10, "requests_per_s": 1} | kw
    with pytest.raises(ValueError):
        cost.downtime_cost(**args)


def test_time_rewrite_measures_growth(make_sandbox):
    box = make_sandbox("cost")
    g = cost.time_rewrite(box, [5_000, 100_000])
    assert g.rows == (5_000, 100_000) and g.slope_s_per_row > 0
    with box.connect("test") as conn:  # the copies are gone
        assert conn.execute("SELECT count(*) FROM pg_class WHERE relname LIKE 'growth_%%' "
                            "AND relnamespace = %s::regnamespace", [box.schema]).fetchone() == (0,)
