"""The serving stack as the shapes evaluations use it: a gRPC client of unclip.v1.Gateway, and a
local stack (`unclip stack`) started and stopped around an evaluation.

The stubs are compiled from proto/ at run time (grpcio-tools), as tests/python/gateway_client.py
does, so nothing generated is committed. Only the light environment is needed (grpcio, PIL).
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image

from .. import UserError

ROOT = Path(__file__).resolve().parents[3]


def png_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


class Gateway:
    """A connected Gateway client; images come back as uint8 [H, W, 3] arrays."""

    def __init__(self, address: str, stubs: Path, timeout: float = 600.0):
        import grpc

        sys.path.insert(0, str(ROOT / "tests" / "python"))
        from gateway_client import compile_stubs

        compile_stubs(stubs)
        sys.path.insert(0, str(stubs))
        from unclip.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc

        self.pb, self.common = gateway_pb2, common_pb2
        self.channel = grpc.insecure_channel(address)
        grpc.channel_ready_future(self.channel).result(timeout=60)
        self.stub = gateway_pb2_grpc.GatewayStub(self.channel)
        self.timeout = timeout

    def info(self):
        return self.stub.GetInfo(self.common.GetInfoRequest(), timeout=self.timeout)

    def generate(self, prompt: str, seed: int) -> np.ndarray:
        """One image with the model's default steps and guidance."""
        r = self.stub.Generate(self.pb.GenerateRequest(prompt=prompt, num_images=1, seed=seed), timeout=self.timeout)
        return np.asarray(Image.open(io.BytesIO(r.images[0].png)).convert("RGB"))

    def inpaint(self, image: np.ndarray, keep: np.ndarray, prompt: str, seed: int) -> np.ndarray:
        """Regenerates where `keep` is False (sent as transparent pixels of the mask)."""
        side = image.shape[0]
        alpha = np.where(keep, 255, 0).astype(np.uint8)
        mask = np.dstack([np.zeros((side, side, 3), np.uint8), alpha])
        r = self.stub.Inpaint(
            self.pb.InpaintRequest(image=png_bytes(image), mask=png_bytes(mask), prompt=prompt, seed=seed), timeout=self.timeout
        )
        return np.asarray(Image.open(io.BytesIO(r.images[0].png)).convert("RGB"))


@contextmanager
def connect(address: str | None, model: Path, unclip: Path, startup_seconds: float = 900.0) -> Iterator[Gateway]:
    """A Gateway client: of `address` when given, else of a local stack over `model` started with
    `unclip stack` (the release binary) for the duration, and stopped (SIGTERM) afterwards."""
    with tempfile.TemporaryDirectory(prefix="shapes-eval-") as tmp:
        stubs = Path(tmp) / "stubs"
        stubs.mkdir()
        if address is not None:
            yield Gateway(address, stubs)
            return
        if not unclip.exists():
            raise UserError(f"{unclip} does not exist: build it (`cargo build --release -p unclip-cli`) or pass --gateway")
        info = Path(tmp) / "stack.info"
        log = open(Path(tmp) / "stack.log", "w")
        proc = subprocess.Popen([str(unclip), "stack", "--model", str(model), "--listen-info", str(info)], stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            deadline = time.time() + startup_seconds
            while not info.exists():
                if proc.poll() is not None:
                    raise UserError(f"`unclip stack` exited with {proc.returncode}: {(Path(tmp) / 'stack.log').read_text()[-2000:]}")
                if time.time() > deadline:
                    raise UserError(f"`unclip stack` did not serve within {startup_seconds:.0f} s")
                time.sleep(0.5)
            lines = dict(line.split("=", 1) for line in info.read_text().splitlines() if "=" in line)
            address = lines["gateway"].removeprefix("http://").removeprefix("https://")
            print(f"[stack] {model} serving at {address}", flush=True)
            yield Gateway(address, stubs)
        finally:
            if proc.poll() is None:
                proc.terminate()  # `unclip stack` stops its services on SIGTERM
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)  # its own session: the stack and its services
                    proc.wait()
            log.close()
