"""Runs the `sh` examples of docs/http-api.md against a live gateway, so they cannot rot.

    python tests/python/doc_examples.py --gateway 127.0.0.1:PORT

Every ```sh block runs in order in one temporary folder (files one block writes, the next reads),
under `bash -euo pipefail` with GATEWAY set and the first block (the helpers) prepended. A block
must exit 0, and its output must hold no error object, except where the block says it answers
one ("# → {"error"...") and then it must. Prints "doc examples: all passed".
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

DOC = Path(__file__).resolve().parents[2] / "docs" / "http-api.md"


def blocks(text: str) -> list[str]:
    return re.findall(r"^```sh\n(.*?)^```", text, flags=re.S | re.M)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--gateway", required=True, help="host:port")
    args = parser.parse_args()
    found = blocks(DOC.read_text())
    assert len(found) >= 5, f"only {len(found)} sh blocks in {DOC}"
    helpers, examples = found[0], found[1:]
    env = dict(os.environ, GATEWAY=args.gateway)
    with tempfile.TemporaryDirectory() as folder:
        for i, block in enumerate(examples, 1):
            run = subprocess.run(["bash", "-euo", "pipefail", "-c", helpers + "\n" + block],
                                 cwd=folder, env=env, capture_output=True, text=True, timeout=600)
            first = block.strip().splitlines()[0]
            print(f"--- example {i}: {first}\n{run.stdout}{run.stderr}")
            assert run.returncode == 0, f"example {i} exited {run.returncode}"
            expects_error = '# → {"error"' in block
            has_error = '"error"' in run.stdout
            assert has_error == expects_error, f"example {i}: error in output {has_error}, expected {expects_error}"
        for name in ["red.png", "blue.png", "variation.png", "edited.png", "frame0.png"]:
            data = (Path(folder) / name).read_bytes()
            assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{name} is not a PNG"
        assert (Path(folder) / "diff.apng").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    print("doc examples: all passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
