"""`python -m unclip_tools bench`: the Python baseline's report has `unclip bench --json`'s
shape and stage names, and `--compare` sets reports side by side."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from unclip_tools.__main__ import main
from unclip_tools.bench import percentile

MODEL = Path(__file__).resolve().parents[2] / "models" / "shapes"
FAST = ["--prior-steps", "2", "--decoder-steps", "2", "--upsampler-steps", "2", "--threads", "1"]


def test_percentiles_by_nearest_rank() -> None:
    values = [float(v) for v in range(100, 1001, 100)]
    assert [percentile(values, q) for q in (0.5, 0.9, 0.99)] == [500.0, 900.0, 1000.0]
    assert percentile([7.0], 0.5) == 7.0


@pytest.mark.skipif(not (MODEL / "manifest.json").exists(), reason="models/shapes not exported yet")
def test_report_and_comparison(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--model", str(MODEL), "--requests", "2", "--warmup", "0", "--num-images", "2", "--json", *FAST]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["model"].startswith("shapes sha256-")
    assert (report["requests"], report["images"], report["failures"]) == (2, 4, 0)
    assert set(report["stages"]) == {
        "clip.encode_text",
        "prior.sample",
        "decoder.decode",
        "decoder.upsample[0]",
        "decoder.upsample[1]",
    }
    assert all(s["calls"] == 2 and s["mean_seconds"] > 0 for s in report["stages"].values())
    lat = report["latency_ms"]
    assert 0 < lat["p50"] <= lat["p90"] <= lat["max"]

    file = tmp_path / "python.json"
    file.write_text(json.dumps(report))
    assert main(["bench", "--compare", f"a=b={file}", f"python={file}"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("| run | images/s | p50 ms | p90 ms | clip.encode_text s | prior.sample s | decoder.decode s |")
    assert lines[2].startswith("| a=b | ") and lines[3].startswith("| python | ")

    slow = tmp_path / "slow.json"
    slow.write_text(json.dumps({**report, "images_per_second": report["images_per_second"] / 4,
                                "latency_ms": {**lat, "p50": lat["p50"] * 2}}))
    assert main(["bench", "--compare", f"python={file}", f"slow={slow}", "--ratio", "python/slow"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "python / slow: 4.00x the images/s, 0.50x the p50 latency"


def test_bad_arguments_are_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--compare", "no-label"]) == 2
    assert "--compare takes LABEL=FILE, got 'no-label'" in capsys.readouterr().err
    assert main(["bench", "--compare", f"x={tmp_path / 'missing.json'}"]) == 2
    assert "cannot read the report" in capsys.readouterr().err
    report = tmp_path / "r.json"
    report.write_text(json.dumps({"images_per_second": 1.0, "latency_ms": {"p50": 1.0}, "stages": {}}))
    assert main(["bench", "--compare", f"a={report}", "--ratio", "a/b"]) == 2
    assert "--ratio 'a/b': no report labelled 'b'" in capsys.readouterr().err
    assert main(["bench", "--compare", f"a={report}", "--ratio", "a"]) == 2
    assert "--ratio takes NUM/DEN" in capsys.readouterr().err
    assert main(["bench", "--model", str(MODEL), "--requests", "0"]) == 2
    assert "--requests must be at least 1, got 0" in capsys.readouterr().err
