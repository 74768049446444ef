"""`subbench demo` end to end in a fresh process, on the embedded real cells, with short training times."""

from __future__ import annotations

import json

import pytest

from conftest import run_cli


@pytest.mark.slow
def test_demo_trains_checks_scores_and_tells_the_story(tmp_path):
    out = tmp_path / "demo"
    res = run_cli("demo", "-o", str(out), "--plain-minutes", "0.3", "--aware-minutes", "0.3", timeout=1500)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    for step in ("1/4 data", "2/4 build plain", "2/4 build hidden-aware", "3/4 check", "4/4 score"):
        assert step in res.stdout
    assert res.stdout.count("all checks passed") == 2
    assert "Acevedo" in res.stdout or "PBC" in res.stdout
    board = json.loads((out / "leaderboard" / "leaderboard.json").read_text())
    rows = {r["name"]: r for r in board["rows"]}
    assert set(rows) == {"plain", "hidden-aware"} and board["comparable"]
    for r in rows.values():
        assert r["status"] == "ok" and r["n"] == 370 and r["simulate_hidden"] == "an2dl"
        assert 0.0 <= r["score"] <= 1.0 and 0.0 <= r["clean"] <= 1.0
    assert "on hidden-like cells the hidden-aware model gets" in res.stdout
    page = (out / "report.html").read_text()
    assert 'id="leaderboard"' in page and page.count('id="score"') == 2
    for name in ("plain", "hidden-aware"):
        assert (out / f"{name}.zip").is_file() and (out / f"{name}-score" / "scores.json").is_file()

    again = run_cli("demo", "-o", str(out))
    assert again.returncode == 2 and "OutputExistsError" in again.stderr and "Traceback" not in again.stderr
