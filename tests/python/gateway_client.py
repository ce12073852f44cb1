"""A Python gRPC client of unclip.v1.Gateway, generated from proto/ with grpcio-tools.

It proves that another language can use the contract: stubs are compiled from the .proto files
at run time (nothing generated is committed), then GetInfo, Generate, GenerateStream and one bad
request are sent to a running gateway. Exit status 0 means every check passed.

    python tests/python/gateway_client.py --gateway 127.0.0.1:50050
    python tests/python/gateway_client.py --gateway localhost:50050 --ca ca.pem --api-key KEY
"""

import argparse
import io
import pathlib
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[2]


def compile_stubs(out: pathlib.Path) -> None:
    """Generates *_pb2.py and *_pb2_grpc.py for every unclip/v1 proto into `out`."""
    from grpc_tools import protoc
    import grpc_tools

    protos = sorted(str(p.relative_to(ROOT / "proto")) for p in (ROOT / "proto").rglob("*.proto"))
    include = pathlib.Path(grpc_tools.__file__).parent / "_proto"
    args = ["protoc", f"-I{ROOT / 'proto'}", f"-I{include}",
            f"--python_out={out}", f"--grpc_python_out={out}", *protos]
    if protoc.main(args) != 0:
        sys.exit("protoc failed on " + " ".join(protos))


def check(condition: bool, what: str) -> None:
    if not condition:
        sys.exit(f"FAILED: {what}")
    print(f"ok: {what}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gateway", required=True, help="host:port of unclip-gateway")
    parser.add_argument("--ca", type=pathlib.Path,
                        help="connect with TLS, trusting the CA certificate(s) in this PEM file")
    parser.add_argument("--cert", type=pathlib.Path, help="client certificate (PEM) for mutual TLS")
    parser.add_argument("--key", type=pathlib.Path, help="private key of --cert (PEM)")
    parser.add_argument("--api-key", help="sent as `authorization: Bearer KEY` on every call")
    args = parser.parse_args()
    metadata = (("authorization", f"Bearer {args.api_key}"),) if args.api_key else ()

    import grpc
    from PIL import Image

    with tempfile.TemporaryDirectory() as tmp:
        compile_stubs(pathlib.Path(tmp))
        sys.path.insert(0, tmp)
        from unclip.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc

        if args.ca:
            credentials = grpc.ssl_channel_credentials(
                root_certificates=args.ca.read_bytes(),
                private_key=args.key.read_bytes() if args.key else None,
                certificate_chain=args.cert.read_bytes() if args.cert else None)
            channel = grpc.secure_channel(args.gateway, credentials)
        else:
            channel = grpc.insecure_channel(args.gateway)
        grpc.channel_ready_future(channel).result(timeout=30)
        gateway = gateway_pb2_grpc.GatewayStub(channel)

        info = gateway.GetInfo(common_pb2.GetInfoRequest(), timeout=30, metadata=metadata)
        check(info.model.version.startswith("sha256-"), f"GetInfo names the model ({info.model.model_id} {info.model.version})")

        prompt = "a small red circle in the top left on a white background"
        response = gateway.Generate(
            gateway_pb2.GenerateRequest(prompt=prompt, num_images=2, seed=7), timeout=120, metadata=metadata)
        check([image.seed for image in response.images] == [7, 8], "Generate returns image k with seed + k")
        for image in response.images:
            decoded = Image.open(io.BytesIO(image.png))
            check(decoded.format == "PNG" and decoded.size == (response.size, response.size),
                  f"image {image.seed} is a {response.size}x{response.size} PNG")
        stages = [timing.stage for timing in response.timings]
        check("prior.sample" in stages and "decoder.decode" in stages, f"timings per stage: {stages}")

        events = list(gateway.GenerateStream(
            gateway_pb2.GenerateRequest(prompt=prompt, seed=7), timeout=120, metadata=metadata))
        kinds = [event.WhichOneof("event") for event in events]
        check(kinds[-1] == "result" and kinds.count("result") == 1 and "progress" in kinds,
              f"GenerateStream sends progress, then one result ({len(events)} events)")
        check(events[-1].result.images[0].png == response.images[0].png,
              "the streamed image equals the unary one for the same seed")
        progress_stages = {e.progress.stage for e in events if e.WhichOneof("event") == "progress"}
        timing_stages = {timing.stage for timing in events[-1].result.timings}
        check(progress_stages == timing_stages,
              f"progress and timings name the same stages: {sorted(progress_stages)}")

        try:
            gateway.Generate(gateway_pb2.GenerateRequest(prompt=prompt, num_images=0), timeout=30,
                             metadata=metadata)
            check(False, "num_images 0 is refused")
        except grpc.RpcError as error:
            check(error.code() == grpc.StatusCode.INVALID_ARGUMENT and error.details().startswith("num_images"),
                  f"num_images 0 is refused: {error.code().name} {error.details()}")
    print("python client: all checks passed")


if __name__ == "__main__":
    main()
