"""`python -m unclip_tools.bench_http`: the rounds are a balanced Latin square (fair to all four
ways), and the report carries the two ratios issue 12 sets goals for."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from unclip_tools.bench_http import WAYS, main, round_order, rounds_for, summarize


def test_rounds_are_a_williams_square() -> None:
    n = len(WAYS)
    rows = [round_order(r, n) for r in range(n)]
    assert rows[0] == [0, 1, 3, 2]
    # Every round runs every way once; over n rounds every way takes every position once...
    assert all(sorted(row) == list(range(n)) for row in rows)
    for position in range(n):
        assert sorted(row[position] for row in rows) == list(range(n))
    # ...and follows every other way exactly once.
    pairs = Counter((row[k], row[k + 1]) for row in rows for k in range(n - 1))
    assert set(pairs) == {(a, b) for a in range(n) for b in range(n) if a != b}
    assert set(pairs.values()) == {1}
    # The square repeats, warm-up rounds (negative) included.
    assert round_order(n + 1, n) == rows[1] and round_order(-1, n) == rows[n - 1]


def test_requests_round_up_to_whole_squares() -> None:
    assert [rounds_for(r, 4) for r in (1, 4, 5, 20, 21)] == [4, 4, 8, 20, 24]


def fixture_times() -> dict[str, list[float]]:
    # Seconds per request: HTTP 4% slower at p50, gRPC streaming 10% slower on the mean.
    return {
        "grpc Generate": [1.0, 1.0, 1.0, 1.0],
        "grpc GenerateStream+previews": [1.1, 1.1, 1.1, 1.1],
        "http generations": [1.04, 1.04, 1.04, 1.2],
        "http generations stream": [1.08, 1.08, 1.08, 1.24],
    }


def test_summary_rows_and_ratios() -> None:
    report = summarize(fixture_times())
    assert [r["way"] for r in report["ways"]] == WAYS
    http = report["ways"][2]
    assert http["requests"] == 4 and http["p50_ms"] == pytest.approx(1040.0)
    assert http["per_second"] == pytest.approx(1 / 1.08)
    assert http["vs_grpc"] == pytest.approx(1.08)
    ratios = report["ratios"]
    assert ratios["http_over_grpc_p50"]["value"] == pytest.approx(1.04)
    assert ratios["http_over_grpc_p50"]["met"] is True
    assert ratios["http_over_grpc_p50"]["goal"] == "<= 1.05"
    assert ratios["grpc_stream_over_unary_throughput"]["value"] == pytest.approx(1 / 1.1)
    assert ratios["grpc_stream_over_unary_throughput"]["met"] is False
    assert ratios["http_stream_over_unary_throughput"]["value"] == pytest.approx(1.08 / 1.12)
    assert ratios["http_stream_over_unary_throughput"]["met"] is True


def test_table_of_a_saved_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    file = tmp_path / "http.json"
    file.write_text(json.dumps(summarize(fixture_times())))
    assert main(["--table", str(file)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "| way | n | mean ms | p50 ms | p90 ms | req/s | vs gRPC |"
    assert out[2] == "| grpc Generate | 4 | 1000.0 | 1000.0 | 1000.0 | 1.000 | 1.000 |"
    assert "| HTTP / gRPC p50 latency (Generate) | 1.040 | <= 1.05: met |" in out
    assert "| gRPC stream+previews / Generate throughput | 0.909 | >= 0.95: missed |" in out


def test_gateway_or_table_is_required(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main([])
    assert "--gateway is required" in capsys.readouterr().err
