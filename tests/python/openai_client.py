"""The gateway's HTTP API through the official `openai` Python SDK (issue 12 item 2).

Run by tests/http.rs against a local stack on the shapes model:
    python tests/python/openai_client.py --base-url http://127.0.0.1:PORT/v1 [--api-key KEY]

images.generate, images.create_variation and images.edit each return PNGs of the model's
size; the shapes model draws the colour the prompt names; a bad request is the SDK's
BadRequestError with the gateway's message. With --expect-auth, a call without the key is the
SDK's AuthenticationError and one with it succeeds. Prints "openai client: all checks passed".
"""

from __future__ import annotations

import argparse
import base64
import io
import sys

import openai
from openai import OpenAI
from PIL import Image

SIZE = "128x128"
# Prompt -> the colour the shapes model paints the shape, and where to look.
COLOURS = {
    "a large red circle in the center on a white background": (255, 0, 0),
    "a large blue square in the center on a black background": (0, 0, 255),
    "a large green triangle in the center on a white background": (0, 160, 0),
}


def decode(b64: str) -> Image.Image:
    raw = base64.b64decode(b64)
    assert raw[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    image = Image.open(io.BytesIO(raw))
    assert f"{image.width}x{image.height}" == SIZE, image.size
    return image.convert("RGB")


def centre_colour(image: Image.Image) -> tuple[float, float, float]:
    """The mean colour of the central 16x16 pixels."""
    w, h = image.size
    box = image.crop((w // 2 - 8, h // 2 - 8, w // 2 + 8, h // 2 + 8))
    return tuple(float(c) for c in box.resize((1, 1), Image.Resampling.BOX).getpixel((0, 0)))  # type: ignore[union-attr, return-value]


def dominant(colour: tuple[float, float, float]) -> int:
    return max(range(3), key=lambda c: colour[c])


def png_bytes(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--api-key", default="x")
    parser.add_argument("--expect-auth", action="store_true")
    args = parser.parse_args()

    client = OpenAI(base_url=args.base_url, api_key=args.api_key, max_retries=0, timeout=300)

    if args.expect_auth:
        stranger = OpenAI(base_url=args.base_url, api_key="not-a-key", max_retries=0, timeout=60)
        try:
            stranger.images.generate(prompt="a red circle", n=1, size=SIZE)
        except openai.AuthenticationError as e:
            print(f"no key: AuthenticationError {e.status_code}")
        else:
            raise AssertionError("a wrong key was accepted")

    models = client.models.list()
    model_id = models.data[0].id
    assert model_id == "shapes", model_id

    # images.generate: PNGs of the model's size, the colour the prompt names.
    first = None
    for prompt, rgb in COLOURS.items():
        result = client.images.generate(prompt=prompt, n=1, size=SIZE, model=model_id,
                                        response_format="b64_json", extra_body={"seed": 5})
        assert len(result.data) == 1
        image = decode(result.data[0].b64_json)
        colour = centre_colour(image)
        assert dominant(colour) == dominant(rgb), f"{prompt!r}: centre {colour}, want {rgb}"
        print(f"generate {prompt!r}: centre colour {tuple(round(c) for c in colour)}")
        first = first or image
    assert first is not None

    two = client.images.generate(prompt="a small red circle in the top left on a white background",
                                 n=2, size=SIZE)
    assert len(two.data) == 2
    for item in two.data:
        decode(item.b64_json)

    # images.create_variation: a PNG upload, two variations.
    variations = client.images.create_variation(image=("in.png", png_bytes(first), "image/png"),
                                                n=2, size=SIZE)
    assert len(variations.data) == 2
    for item in variations.data:
        decode(item.b64_json)
    print("create_variation: 2 PNGs")

    # images.edit: the right half transparent in the mask is regenerated as a blue square.
    mask = Image.new("RGBA", first.size, (0, 0, 0, 255))
    for y in range(first.height):
        for x in range(first.width // 2, first.width):
            mask.putpixel((x, y), (0, 0, 0, 0))
    edited = client.images.edit(image=("in.png", png_bytes(first), "image/png"),
                                mask=("mask.png", png_bytes(mask), "image/png"),
                                prompt="a large blue square in the center on a black background",
                                n=1, size=SIZE)
    decode(edited.data[0].b64_json)
    print("edit: 1 PNG")

    # URLs: fetched with the SDK's own HTTP client.
    by_url = client.images.generate(prompt="a large red circle in the center on a white background",
                                    n=1, size=SIZE, response_format="url")
    url = by_url.data[0].url
    assert url and "/v1/files/" in url, url
    fetched = client._client.get(url)
    assert fetched.status_code == 200, fetched.status_code
    assert fetched.content[:8] == b"\x89PNG\r\n\x1a\n"
    print("url: served")

    # Bad requests: the SDK's BadRequestError carrying our message and parameter.
    for kwargs, param, text in [
        ({"prompt": "a red circle", "n": 40}, "n", "n: must be 1..="),
        ({"prompt": "a red circle", "size": "256x256"}, "size", '"128x128"'),
    ]:
        try:
            client.images.generate(**kwargs)  # type: ignore[arg-type]
        except openai.BadRequestError as e:
            assert e.status_code == 400
            assert text in e.message, e.message
            assert isinstance(e.body, dict) and e.body.get("param") == param, e.body
            print(f"bad request {param}: {e.message}")
        else:
            raise AssertionError(f"{kwargs} was accepted")

    print("openai client: all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
