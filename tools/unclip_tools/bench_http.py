"""HTTP against gRPC: the same Generate through both of the gateway's transports, one client.

    python -m unclip_tools.bench_http --gateway 127.0.0.1:50050 [--requests 20] [--json]
    python -m unclip_tools.bench_http --table REPORT.json

Four ways: gRPC `Generate`, gRPC `GenerateStream` with previews, HTTP
`POST /v1/images/generations` (b64_json) and the same with `"stream": true` (progress and
preview events). They take turns request by request in rounds, the order of each round a row of
a balanced Latin square (Williams): over every four rounds each way runs once in each position
and follows each other way exactly once, so a machine shared with other work, and whatever one
way leaves behind for the next, fall on all four alike. `--requests` is rounded up to a multiple
of four for that. Every request has its own seed (so the prior runs every time); the captions
take turns by round, so the four ways of a round draw the same caption.

Prints (as markdown tables) mean, p50 and p90 latency per way and each one's mean relative to gRPC `Generate`, then
the ratios issue 12 sets goals for: HTTP over gRPC p50 latency (goal <= 1.05) and, per
transport, streamed-with-previews over plain throughput (goal >= 0.95; at one client
throughput is the inverse of the mean latency). `scripts/bench-http` and `scripts/bench` start a
stack without the embedding cache and run this.
"""

from __future__ import annotations

import argparse
import http.client
import json
import pathlib
import statistics
import sys
import tempfile
import time
from typing import Any, Callable

from .bench import percentile

ROOT = pathlib.Path(__file__).resolve().parents[2]
CAPTIONS = [
    "a small red circle in the top left on a white background",
    "a large blue square in the center on a black background",
    "a large green triangle in the center on a white background",
    "a small yellow circle in the bottom right on a black background",
]
WAYS = ["grpc Generate", "grpc GenerateStream+previews", "http generations", "http generations stream"]
# (name, numerator way, denominator way, what is compared, goal, the goal's direction)
RATIOS = [
    ("http_over_grpc_p50", "http generations", "grpc Generate", "p50_ms", 1.05, "<="),
    ("grpc_stream_over_unary_throughput", "grpc GenerateStream+previews", "grpc Generate", "per_second", 0.95, ">="),
    ("http_stream_over_unary_throughput", "http generations stream", "http generations", "per_second", 0.95, ">="),
]
RATIO_TEXT = {
    "http_over_grpc_p50": "HTTP / gRPC p50 latency (Generate)",
    "grpc_stream_over_unary_throughput": "gRPC stream+previews / Generate throughput",
    "http_stream_over_unary_throughput": "HTTP stream / generations throughput",
}


def round_order(round_index: int, n: int) -> list[int]:
    """The order of the ways in round `round_index`: row `round_index mod n` of a Williams
    square. For even n every way takes every position once over n rounds and immediately
    follows every other way exactly once."""
    first = [0]
    low, high = 1, n - 1
    while len(first) < n:
        first.append(low)
        low += 1
        if len(first) < n:
            first.append(high)
            high -= 1
    return [(way + round_index) % n for way in first]


def rounds_for(requests: int, n: int) -> int:
    """Measured rounds: `requests` rounded up to a multiple of n, so the square is complete."""
    return -(-max(requests, 1) // n) * n


def summarize(times: dict[str, list[float]]) -> dict[str, Any]:
    """The report of measured latencies (seconds) per way: rows in WAYS order and the ratios."""
    base = statistics.mean(times["grpc Generate"])
    rows = []
    for name in WAYS:
        values = times[name]
        ordered = sorted(values)
        mean = statistics.mean(values)
        rows.append({
            "way": name,
            "requests": len(values),
            "mean_ms": mean * 1000,
            "p50_ms": percentile(ordered, 0.5) * 1000,
            "p90_ms": percentile(ordered, 0.9) * 1000,
            "per_second": 1 / mean,
            "vs_grpc": mean / base,
        })
    by_way = {r["way"]: r for r in rows}
    ratios = {}
    for name, top, bottom, field, goal, direction in RATIOS:
        value = by_way[top][field] / by_way[bottom][field]
        met = value <= goal if direction == "<=" else value >= goal
        ratios[name] = {"value": value, "goal": f"{direction} {goal}", "met": met}
    return {"ways": rows, "ratios": ratios}


def table(report: dict[str, Any]) -> str:
    """The report as two markdown tables: the ways, then the ratios with their goals."""
    lines = ["| way | n | mean ms | p50 ms | p90 ms | req/s | vs gRPC |", "|---|---|---|---|---|---|---|"]
    for r in report["ways"]:
        lines.append(f"| {r['way']} | {r['requests']} | {r['mean_ms']:.1f} | {r['p50_ms']:.1f} | "
                     f"{r['p90_ms']:.1f} | {r['per_second']:.3f} | {r['vs_grpc']:.3f} |")
    lines += ["", "| ratio | value | goal |", "|---|---|---|"]
    for name, ratio in report["ratios"].items():
        verdict = "met" if ratio["met"] else "missed"
        lines.append(f"| {RATIO_TEXT[name]} | {ratio['value']:.3f} | {ratio['goal']}: {verdict} |")
    return "\n".join(lines)


def compile_stubs(out: pathlib.Path) -> None:
    """*_pb2.py and *_pb2_grpc.py of proto/unclip/v1 into `out` (nothing generated is committed)."""
    import grpc_tools
    from grpc_tools import protoc

    protos = sorted(str(p.relative_to(ROOT / "proto")) for p in (ROOT / "proto").rglob("*.proto"))
    include = pathlib.Path(grpc_tools.__file__).parent / "_proto"
    args = ["protoc", f"-I{ROOT / 'proto'}", f"-I{include}",
            f"--python_out={out}", f"--grpc_python_out={out}", *protos]
    if protoc.main(args) != 0:
        sys.exit("protoc failed")


def http_generate(connection: http.client.HTTPConnection, body: dict[str, Any]) -> int:
    """One generation over HTTP; the number of images (completed events when streaming)."""
    connection.request("POST", "/v1/images/generations", body=json.dumps(body),
                       headers={"Content-Type": "application/json"})
    response = connection.getresponse()
    data = response.read()
    if response.status != 200:
        sys.exit(f"HTTP {response.status}: {data[:300]!r}")
    if body.get("stream"):
        return data.count(b"event: image_generation.completed")
    return len(json.loads(data)["data"])


def measure(gateway: str, requests: int, warmup: int) -> dict[str, list[float]]:
    """Latencies (seconds) per way of `rounds_for(requests)` measured rounds after `warmup`."""
    import grpc

    with tempfile.TemporaryDirectory() as tmp:
        compile_stubs(pathlib.Path(tmp))
        sys.path.insert(0, tmp)
        from unclip.v1 import gateway_pb2, gateway_pb2_grpc  # type: ignore[import-not-found]

        channel = grpc.insecure_channel(gateway, options=[
            ("grpc.max_receive_message_length", 64 << 20)])
        grpc.channel_ready_future(channel).result(timeout=60)
        stub = gateway_pb2_grpc.GatewayStub(channel)
        host, port = gateway.rsplit(":", 1)
        connection = http.client.HTTPConnection(host, int(port), timeout=600)

        def grpc_unary(prompt: str, seed: int) -> int:
            request = gateway_pb2.GenerateRequest(prompt=prompt, seed=seed)
            return len(stub.Generate(request, timeout=600).images)

        def grpc_stream(prompt: str, seed: int) -> int:
            request = gateway_pb2.GenerateRequest(prompt=prompt, seed=seed, previews=True)
            last = None
            for event in stub.GenerateStream(request, timeout=600):
                last = event
            assert last is not None and last.WhichOneof("event") == "result"
            return len(last.result.images)

        def http_unary(prompt: str, seed: int) -> int:
            return http_generate(connection, {"prompt": prompt, "seed": seed})

        def http_stream(prompt: str, seed: int) -> int:
            return http_generate(connection, {"prompt": prompt, "seed": seed, "stream": True})

        calls: list[Callable[[str, int], int]] = [grpc_unary, grpc_stream, http_unary, http_stream]
        times: dict[str, list[float]] = {name: [] for name in WAYS}
        seed = 1000
        rounds = rounds_for(requests, len(WAYS))
        # Warm-up rounds take the square's last rows, so the measured ones start at row 0.
        for r in range(-warmup, rounds):
            prompt = CAPTIONS[r % len(CAPTIONS)]
            for way in round_order(r, len(WAYS)):
                seed += 1
                started = time.perf_counter()
                images = calls[way](prompt, seed)
                elapsed = time.perf_counter() - started
                assert images == 1, f"{WAYS[way]}: {images} images"
                if r >= 0:
                    times[WAYS[way]].append(elapsed)
        connection.close()
        channel.close()
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gateway", help="host:port of the gateway to measure")
    parser.add_argument("--requests", type=int, default=20,
                        help="measured requests per way, rounded up to a multiple of 4 (default 20)")
    parser.add_argument("--warmup", type=int, default=2, help="unmeasured rounds first (default 2)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--table", type=pathlib.Path, metavar="REPORT",
                        help="measure nothing: print the table of a report written with --json")
    args = parser.parse_args(argv)
    if args.table:
        print(table(json.loads(args.table.read_text())))
        return 0
    if not args.gateway:
        parser.error("--gateway is required (or --table REPORT)")
    report = summarize(measure(args.gateway, args.requests, args.warmup))
    print(json.dumps(report, indent=2) if args.json else table(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
