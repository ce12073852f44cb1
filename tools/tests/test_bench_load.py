"""`python -m unclip_tools load-captions` and `load-report`: the captions share nothing, the
reports of `scripts/bench-load` (fixtures: real reports of a short trial run on a loaded machine)
become tables, a JSON summary and the plot."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from unclip_tools.__main__ import main
from unclip_tools.bench import DEFAULT_PROMPTS
from unclip_tools.bench_load import captions, configuration

FIXTURES = Path(__file__).parent / "fixtures" / "bench-load"
CONFIGS = [f"1 decoder replica={FIXTURES / 'decoders-1'}", f"2 decoder replicas={FIXTURES / 'decoders-2'}"]


def test_captions_are_distinct_and_not_the_bench_defaults() -> None:
    first = captions(300)
    assert len(set(first)) == 300
    assert not set(first) & set(DEFAULT_PROMPTS)
    assert captions(5) == first[:5]  # the same order every time
    assert all(c.startswith(("a ", "an ")) and c.endswith(" background") for c in first)
    assert captions(1916)  # every fully specified single-object caption but the 4 defaults


def test_bad_caption_count_is_named(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["load-captions", "0"]) == 2
    assert "load-captions: N must be 1..=1916, got 0" in capsys.readouterr().err
    assert main(["load-captions", "1917"]) == 2


def test_configuration_from_reports() -> None:
    c = configuration("one", FIXTURES / "decoders-1")
    assert c.capacity == pytest.approx(0.4937766784121485)
    assert [p.offered for p in c.points] == [0.2469, 0.6172]  # sorted by offered rate
    high = c.points[1]
    assert (high.sent, high.ok, high.refused) == (2, 2, 0)
    assert high.p50 == pytest.approx(2928.501007) and high.p99 == pytest.approx(3061.751566)
    assert high.achieved == pytest.approx(0.4952789684321325)


def test_tables_and_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    summary = tmp_path / "summary.json"
    args = ["load-report", "--config", CONFIGS[0], "--config", CONFIGS[1], "--cache", str(FIXTURES / "cache")]
    assert main([*args, "--json", str(summary)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("| configuration | capacity req/s | offered req/s | × capacity | achieved req/s | p50 ms |")
    assert out[2] == "| 1 decoder replica | 0.49 | 0.25 | 0.50 | 0.38 | 4892 | 5303 | 5303 | 1 | 0 of 3 |"
    assert out[5].startswith("| 2 decoder replicas | 0.37 | 0.46 | 1.25 |")
    cache = out[out.index("") + 1:]
    assert cache[2].startswith("| new caption, new seed | CLIP, prior, decoder | 4 | 2187 | 3899 | (the base) |")
    assert "| clip.encode_text 4 |" in cache[3]
    # 2186.6 - 1634.3 ms at p50; the stages the cache answered, from the report.
    assert "| 552 ms (25%) | 1349 ms (35%) | clip.encode_text 4, prior.sample 4 |" in cache[4]

    figures = json.loads(summary.read_text())
    assert [c["label"] for c in figures["configurations"]] == ["1 decoder replica", "2 decoder replicas"]
    assert figures["configurations"][1]["points"][0]["offered"] == pytest.approx(0.1859)
    repeat = figures["cache"][2]
    assert repeat["path"] == "same caption, same seed"
    assert repeat["p50_saving_ms"] == pytest.approx(2186.626714 - 1634.294798)


def test_bad_reports_are_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["load-report", "--config", str(FIXTURES / "decoders-1")]) == 2
    assert "--config takes LABEL=DIR" in capsys.readouterr().err
    assert main(["load-report", "--config", f"x={tmp_path}"]) == 2
    assert "cannot read the report" in capsys.readouterr().err
    # A closed-loop report where an open-loop one belongs.
    shutil.copy(FIXTURES / "decoders-1" / "capacity.json", tmp_path / "capacity.json")
    shutil.copy(FIXTURES / "decoders-1" / "capacity.json", tmp_path / "load-1.json")
    assert main(["load-report", "--config", f"x={tmp_path}"]) == 2
    assert "load-1.json is not an open-loop report (no offered_rate)" in capsys.readouterr().err


def colours(png: Path) -> tuple[tuple[int, int], set[tuple[int, int, int]]]:
    from PIL import Image

    with Image.open(png) as image:
        rgb = image.convert("RGB")
        return rgb.size, {c for _, c in rgb.getcolors(maxcolors=1 << 20)}


def test_plot_from_reports(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib", reason="matplotlib (tools/requirements-plot.txt; scripts/lib.sh setup_plot)")
    both, curves = tmp_path / "both.png", tmp_path / "curves.png"
    assert main(["load-report", "--config", CONFIGS[0], "--config", CONFIGS[1], "--cache",
                 str(FIXTURES / "cache"), "--plot", str(both), "--note", "trial"]) == 0
    assert main(["load-report", "--config", CONFIGS[0], "--plot", str(curves)]) == 0
    # Three panels with the cache paths, two without; 100 dpi.
    size, drawn = colours(both)
    assert size == (1560, 440)
    # matplotlib's first two line colours: one per configuration.
    assert {(0x1F, 0x77, 0xB4), (0xFF, 0x7F, 0x0E)} <= drawn
    size, drawn = colours(curves)
    assert size == (1040, 440)
    assert (0x1F, 0x77, 0xB4) in drawn and (0xFF, 0x7F, 0x0E) not in drawn
