"""HTTP against gRPC: the same Generate through both of the gateway's transports, one client.

    python -m unclip_tools.bench_http --gateway 127.0.0.1:50050 [--requests 20]

Four ways, interleaved request by request (the order rotating) so that a machine shared with
other work slows them alike: gRPC `Generate`, gRPC `GenerateStream` with previews, HTTP
`POST /v1/images/generations` (b64_json) and the same with `"stream": true` (progress and
preview events). Every request has its own seed (so the prior runs every time) and the captions
take turns. Prints mean, p50 and p90 latency per way and each one's ratio to gRPC `Generate`;
at one client, throughput is the inverse of the mean. `scripts/bench-http` starts a stack and
runs this.
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

ROOT = pathlib.Path(__file__).resolve().parents[2]
CAPTIONS = [
    "a small red circle in the top left on a white background",
    "a large blue square in the center on a black background",
    "a large green triangle in the center on a white background",
    "a small yellow circle in the bottom right on a black background",
]


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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gateway", required=True, help="host:port")
    parser.add_argument("--requests", type=int, default=20, help="measured requests per way")
    parser.add_argument("--warmup", type=int, default=2, help="unmeasured requests per way first")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()

    import grpc

    with tempfile.TemporaryDirectory() as tmp:
        compile_stubs(pathlib.Path(tmp))
        sys.path.insert(0, tmp)
        from unclip.v1 import gateway_pb2, gateway_pb2_grpc  # type: ignore[import-not-found]

        channel = grpc.insecure_channel(args.gateway, options=[
            ("grpc.max_receive_message_length", 64 << 20)])
        grpc.channel_ready_future(channel).result(timeout=60)
        stub = gateway_pb2_grpc.GatewayStub(channel)
        host, port = args.gateway.rsplit(":", 1)
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

        ways: list[tuple[str, Callable[[str, int], int]]] = [
            ("grpc Generate", grpc_unary),
            ("grpc GenerateStream+previews", grpc_stream),
            ("http generations", http_unary),
            ("http generations stream", http_stream),
        ]
        times: dict[str, list[float]] = {name: [] for name, _ in ways}
        seed = 1000
        for i in range(args.warmup + args.requests):
            prompt = CAPTIONS[i % len(CAPTIONS)]
            shift = i % len(ways)
            for name, call in ways[shift:] + ways[:shift]:
                seed += 1
                started = time.perf_counter()
                images = call(prompt, seed)
                elapsed = time.perf_counter() - started
                assert images == 1, f"{name}: {images} images"
                if i >= args.warmup:
                    times[name].append(elapsed)
        connection.close()
        channel.close()

    base = statistics.mean(times["grpc Generate"])
    rows = []
    for name, values in times.items():
        ordered = sorted(values)
        mean = statistics.mean(values)
        rows.append({
            "way": name,
            "requests": len(values),
            "mean_ms": mean * 1000,
            "p50_ms": ordered[len(ordered) // 2] * 1000,
            "p90_ms": ordered[min(len(ordered) - 1, int(len(ordered) * 0.9))] * 1000,
            "per_second": 1 / mean,
            "vs_grpc": mean / base,
        })
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(f"{'way':30} {'n':>4} {'mean ms':>9} {'p50 ms':>9} {'p90 ms':>9} {'req/s':>7} {'vs gRPC':>8}")
        for r in rows:
            print(f"{r['way']:30} {r['requests']:>4} {r['mean_ms']:>9.1f} {r['p50_ms']:>9.1f} "
                  f"{r['p90_ms']:>9.1f} {r['per_second']:>7.3f} {r['vs_grpc']:>8.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
