"""The gateway's web page in a real headless Chromium (Playwright driving Debian's `chromium`).

Types a prompt and generates (the progress bar moves, previews arrive, result images appear with
their seeds, the shapes model's colour is right), shows a server error inline, cancels a run,
makes variations from a result's button, paints a mask and inpaints, makes a text diff (θ
slider and animation), interpolates two results, keeps the API key across a reload and sends it
as a bearer token, and fits phones of 360 to 414 px without horizontal overflow (the tab bar
wraps). A screenshot of every step goes to --artifacts, the main one to --docs-screenshot.
Prints "web page: all checks passed" at the end.

Run by tests/web.rs against a local stack on the shapes model:
    python tests/python/web_page.py --url http://127.0.0.1:PORT --artifacts target/tmp/web-page
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

from playwright.sync_api import ConsoleMessage, Page, sync_playwright

BLUE_SQUARE = "a large blue square in the center on a black background"
RED_SQUARE = "a large red square in the center on a black background"
TIMEOUT_MS = 240_000

# Every page script below is a function: the page's CSP forbids eval, which Playwright uses for
# bare expressions.

# Records every value the progress bar takes and every preview image that appears, so that a
# check after the run sees them however fast the events came.
WATCH = """() => {
  window.__seen = { progress: [], previews: 0 };
  const bar = document.querySelector('#progress');
  new MutationObserver(() => window.__seen.progress.push(bar.value))
    .observe(bar, { attributes: true, attributeFilter: ['value'] });
  new MutationObserver((records) => {
    for (const r of records) for (const n of r.addedNodes) if (n.querySelector && n.querySelector('img')) window.__seen.previews++;
  }).observe(document.querySelector('#previews'), { childList: true });
}"""

# The mean colour of the centre quarter of an <img> (after it has loaded), by a canvas.
MEAN_CENTRE = """async (img) => {
  await img.decode();
  const w = img.naturalWidth, h = img.naturalHeight;
  const c = document.createElement('canvas'); c.width = w; c.height = h;
  const ctx = c.getContext('2d'); ctx.drawImage(img, 0, 0);
  const d = ctx.getImageData(w * 3 / 8, h * 3 / 8, w / 4, h / 4).data;
  const sum = [0, 0, 0];
  for (let i = 0; i < d.length; i += 4) { sum[0] += d[i]; sum[1] += d[i + 1]; sum[2] += d[i + 2]; }
  const n = d.length / 4;
  return { size: [w, h], mean: sum.map((s) => s / n) };
}"""


# How the page fits the viewport's width: the document's scroll and client widths, the tab
# bar's, and the tabs whose box reaches outside the screen.
FITS = """() => {
  const root = document.documentElement, tabs = document.querySelector('.tabs');
  const outside = [...tabs.querySelectorAll('button')]
    .filter((b) => { const r = b.getBoundingClientRect(); return r.left < 0 || r.right > root.clientWidth; })
    .map((b) => b.textContent);
  return { scrollWidth: root.scrollWidth, clientWidth: root.clientWidth,
           tabsScroll: tabs.scrollWidth, tabsClient: tabs.clientWidth, outside };
}"""

def check(condition: bool, message: str) -> None:
    if not condition:
        raise AssertionError(message)
    print(f"ok: {message}")


class Steps:
    """Screenshots of each step, numbered in order."""

    def __init__(self, page: Page, folder: Path) -> None:
        self.page = page
        self.folder = folder
        self.count = 0
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.glob("*.png"):
            old.unlink()

    def shot(self, name: str, full_page: bool = True) -> Path:
        self.count += 1
        path = self.folder / f"{self.count:02d}-{name}.png"
        self.page.screenshot(path=str(path), full_page=full_page, animations="disabled")
        print(f"screenshot: {path}")
        return path


def console_problem(message: ConsoleMessage) -> list[str]:
    """A console error, except the browser's note of an API call's error status (the test
    provokes one on purpose; the page shows it inline)."""
    if message.type != "error":
        return []
    if "/v1/" in message.location.get("url", "") and "Failed to load resource" in message.text:
        return []
    return [f"console error: {message.text} ({message.location.get('url')})"]


def gallery_count(page: Page) -> int:
    return page.locator("#gallery .result").count()


def wait_gallery(page: Page, count: int) -> None:
    page.wait_for_function(
        "(n) => document.querySelectorAll('#gallery .result').length >= n && !document.querySelector('#cancel').checkVisibility()",
        arg=count,
        timeout=TIMEOUT_MS,
    )


def form_error(page: Page, form: str) -> str:
    error = page.locator(f"{form} .error")
    return error.inner_text() if error.is_visible() else ""


def run(url: str, artifacts: Path, docs_screenshot: Path | None, chromium: str) -> None:
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        context = browser.new_context(viewport={"width": 1280, "height": 860}, device_scale_factor=1)
        page = context.new_page()
        problems: list[str] = []
        page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
        page.on("console", lambda m: problems.extend(console_problem(m)))
        steps = Steps(page, artifacts)

        # ---- The page loads, with the model's name and the gateway's readiness.
        page.goto(url + "/")
        check(page.title() == "unCLIP", "the page is served at /")
        page.wait_for_function("() => document.querySelector('#model').textContent !== '…'")
        check(page.inner_text("#model") == "shapes", "the header names the served model")
        page.wait_for_selector("#health.ok")
        check(True, "the header shows the gateway ready (/readyz)")

        # ---- A bad setting: the server's message inline, under the form.
        page.fill("#prompt", BLUE_SQUARE)
        page.fill("#steps", "5000")
        page.click("#generate")
        page.wait_for_selector("#form-generate .error:not([hidden])", timeout=TIMEOUT_MS)
        message = form_error(page, "#form-generate")
        check("5000" in message, f"a bad steps value shows the server's message inline: {message!r}")
        steps.shot("server-error")
        page.fill("#steps", "")

        # ---- Generate: progress moves, previews arrive, two results with their seeds.
        page.evaluate(WATCH)
        page.fill("#seed", "11")
        page.fill("#n", "2")
        page.click("#generate")
        check(page.locator("#form-generate .error").is_hidden(), "the error clears on a new run")
        page.wait_for_function(
            "() => { const v = document.querySelector('#progress').value; return v > 0.3 && v < 1; }",
            timeout=TIMEOUT_MS,
        )
        steps.shot("generating")
        wait_gallery(page, 2)
        seen = page.evaluate("() => window.__seen")
        values = seen["progress"]
        between = [v for v in values if 0 < v < 1]
        check(len(set(between)) >= 3, f"the progress bar moved through {len(set(between))} values")
        check(values == sorted(values), "the progress bar never went back")
        check(seen["previews"] > 0, f"{seen['previews']} preview images arrived during the run")
        seeds = page.locator("#gallery .result .seed").all_inner_texts()
        check(seeds == ["11", "12"], f"the results show their seeds: {seeds}")
        for img in page.locator("#gallery .result img").element_handles():
            colour = img.evaluate(MEAN_CENTRE)
            r, g, b = colour["mean"]
            check(colour["size"] == [128, 128], "a result is the model's 128x128")
            check(b > 100 and b > r + 50 and b > g + 50, f"the centre of a blue square is blue: {[round(v) for v in colour['mean']]}")
        steps.shot("generated")

        # ---- Cancel: the run stops, the page says so and takes a new request.
        page.fill("#seed", "")
        page.fill("#n", "4")
        page.click("#generate")
        page.wait_for_function("() => document.querySelector('#progress').value > 0", timeout=TIMEOUT_MS)
        page.click("#cancel")
        page.wait_for_selector("#notice:not([hidden])")
        check("Cancelled" in page.inner_text("#notice"), "Cancel stops the stream and says so")
        check(page.locator("#generate").is_enabled(), "the Generate button is back after a cancel")
        check(gallery_count(page) == 2, "a cancelled run adds no results")
        steps.shot("cancelled", full_page=False)

        # ---- Variations from a result's button.
        before = gallery_count(page)
        page.click("#tab-variations")
        page.fill("#var-n", "2")
        page.locator("#gallery .result").last.locator(".act-vary").click()
        check(page.locator("#form-variations").is_visible(), "the Variations button opens its tab")
        wait_gallery(page, before + 2)
        kinds = page.locator("#gallery .result .kind").all_inner_texts()
        check(kinds[:2] == ["variation", "variation"], f"two variations arrived first in the gallery: {kinds}")
        check(form_error(page, "#form-variations") == "", "the variations ran without an error")
        steps.shot("variations")

        # ---- Inpainting: paint the centre, regenerate it as a red square.
        before = gallery_count(page)
        page.locator("#gallery .result").last.locator(".act-inpaint").click()
        page.wait_for_selector("#painter:not([hidden])")
        box = page.locator("#mask-canvas").bounding_box()
        assert box is not None
        page.fill("#brush", "30")
        page.mouse.move(box["x"] + box["width"] * 0.3, box["y"] + box["height"] * 0.3)
        page.mouse.down()
        for i in range(11):
            page.mouse.move(box["x"] + box["width"] * (0.3 + 0.04 * i), box["y"] + box["height"] * (0.3 + 0.04 * i))
        page.mouse.move(box["x"] + box["width"] * 0.7, box["y"] + box["height"] * 0.3)
        page.mouse.move(box["x"] + box["width"] * 0.3, box["y"] + box["height"] * 0.7)
        page.mouse.up()
        mask = page.evaluate(
            """async () => {
              const blob = await maskBlob();
              const bitmap = await createImageBitmap(blob);
              const c = document.createElement('canvas'); c.width = bitmap.width; c.height = bitmap.height;
              const ctx = c.getContext('2d'); ctx.drawImage(bitmap, 0, 0);
              const d = ctx.getImageData(0, 0, c.width, c.height).data;
              let clear = 0; for (let i = 3; i < d.length; i += 4) if (d[i] < 128) clear++;
              return { size: [c.width, c.height], clear: clear / (d.length / 4), corner: d[3], centre: d[(64 * 128 + 64) * 4 + 3] };
            }"""
        )
        check(mask["size"] == [128, 128], "the mask has the image's size")
        check(0.1 < mask["clear"] < 0.9, f"the painted part of the mask is transparent ({mask['clear']:.0%})")
        check(mask["corner"] == 255 and mask["centre"] == 0, "unpainted opaque, painted centre transparent")
        page.fill("#edit-prompt", RED_SQUARE)
        steps.shot("mask-painted")
        page.click("#inpaint")
        wait_gallery(page, before + 1)
        check(form_error(page, "#form-inpaint") == "", "the inpainting ran without an error")
        newest = page.locator("#gallery .result").first
        check(newest.locator(".kind").inner_text() == "inpainted", "the inpainted image is first in the gallery")
        colour = newest.locator("img").element_handle().evaluate(MEAN_CENTRE)
        r, g, b = colour["mean"]
        print(f"inpainted centre: {[round(v) for v in colour['mean']]}")
        check(r > b, f"the painted centre was regenerated towards red: {[round(v) for v in colour['mean']]}")
        steps.shot("inpainted")

        # ---- Text diff: blue square towards a red square; θ slider; the animation.
        page.locator("#gallery .result").last.locator(".act-textdiff").click()
        check(page.input_value("#td-source") == BLUE_SQUARE, "the caption of the image is filled in from its prompt")
        page.fill("#td-target", RED_SQUARE)
        page.fill("#td-frames", "3")
        page.fill("#td-theta", "0.5")
        page.click("#textdiff")
        page.wait_for_function(
            "() => document.querySelectorAll('#strip img').length === 3 && !document.querySelector('#cancel').checkVisibility()",
            timeout=TIMEOUT_MS,
        )
        check(form_error(page, "#form-textdiff") == "", "the text diff ran without an error")
        page.locator("#frame-slider").fill("2")
        label = page.inner_text("#frame-label")
        check(label.startswith("θ = 0.50"), f"the slider's last frame is at θ = 0.5: {label!r}")
        check(page.locator("#strip img").nth(2).get_attribute("class") == "current", "the strip marks the frame shown")
        steps.shot("text-diff")
        page.click("#show-animation")
        natural = page.locator("#animation").evaluate("async (img) => { await img.decode(); return img.naturalWidth; }")
        check(natural == 128, "the text diff's animation shows")
        steps.shot("text-diff-animation", full_page=False)

        # ---- Interpolation between two results.
        cards = page.locator("#gallery .result")
        cards.last.locator(".act-a").click()
        cards.first.locator(".act-b").click()
        page.fill("#int-frames", "3")
        page.click("#interpolate")
        page.wait_for_function(
            "() => document.querySelector('#sequence-title').textContent.startsWith('Interpolation') && !document.querySelector('#cancel').checkVisibility()",
            timeout=TIMEOUT_MS,
        )
        check(form_error(page, "#form-interpolate") == "", "the interpolation ran without an error")
        check(page.locator("#strip img").count() == 3, "three interpolation frames")
        steps.shot("interpolation")

        # ---- The overview: a run with its previews above the frames and the gallery.
        page.click("#tab-generate")
        page.fill("#prompt", "a small red circle in the top left on a white background")
        page.fill("#seed", "5")
        page.fill("#n", "3")
        before = gallery_count(page)
        page.click("#generate")
        page.wait_for_function(
            "() => document.querySelectorAll('#previews img').length >= 3 || !document.querySelector('#cancel').checkVisibility()",
            timeout=TIMEOUT_MS,
        )
        main_shot = steps.shot("overview")
        wait_gallery(page, before + 3)
        check(form_error(page, "#form-generate") == "", "the second generation ran without an error")

        # ---- The API key: kept across a reload, sent as a bearer token.
        page.click("#key-box summary")
        page.fill("#api-key", "test-key")
        page.reload()
        page.wait_for_selector("#health.ok")
        check(page.input_value("#api-key") == "test-key", "the API key is kept in the browser")
        page.click("#key-box summary")
        with page.expect_request(lambda r: r.url.endswith("/v1/models")) as request:
            page.fill("#api-key", "test-key-2")
            page.locator("#api-key").dispatch_event("change")
        sent = request.value.headers.get("authorization")
        check(sent == "Bearer test-key-2", f"the key goes out as a bearer token: {sent!r}")
        page.fill("#api-key", "")
        page.locator("#api-key").dispatch_event("input")
        check(page.evaluate("() => localStorage.getItem('unclip.apiKey')") is None, "an emptied key is forgotten")

        # ---- Phones' widths (360 to 414 px): one column, nothing wider than the screen, and
        # the tab bar wraps instead of scrolling sideways, so every tab is in sight.
        phone = browser.new_context(viewport={"width": 390, "height": 844}, device_scale_factor=2, is_mobile=True, has_touch=True)
        small = phone.new_page()
        small.on("pageerror", lambda e: problems.append(f"page error (phone): {e}"))
        small.goto(url + "/")
        small.wait_for_selector("#health.ok")
        phone_steps = Steps(small, artifacts / "phone")
        small.fill("#prompt", "a yellow star in the bottom right on a gray background")
        small.fill("#seed", "3")
        small.fill("#n", "2")
        small.tap("#generate")
        wait_gallery(small, 2)
        for width in (360, 390, 414):
            small.set_viewport_size({"width": width, "height": 844})
            fit = small.evaluate(FITS)
            check(
                fit["scrollWidth"] <= fit["clientWidth"] == width,
                f"the page fits a {width} px phone: no horizontal overflow "
                f"(scrollWidth {fit['scrollWidth']} <= clientWidth {fit['clientWidth']})",
            )
            check(
                fit["tabsScroll"] <= fit["tabsClient"],
                f"the tab bar does not scroll sideways at {width} px ({fit['tabsScroll']} <= {fit['tabsClient']})",
            )
            check(not fit["outside"], f"every tab is inside the screen at {width} px (outside: {fit['outside']})")
            phone_steps.shot(f"phone-{width}")
        small.tap("#tab-inpaint")
        check(small.locator("#form-inpaint").is_visible(), "a tab on the wrapped row opens its panel on a phone")
        phone_steps.shot("phone-inpaint-tab", full_page=False)
        phone.close()

        check(not problems, f"no script errors or blocked resources: {problems}")
        browser.close()

    if docs_screenshot is not None:
        shutil.copyfile(main_shot, docs_screenshot)
        print(f"screenshot: {docs_screenshot}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="the gateway, e.g. http://127.0.0.1:50050")
    parser.add_argument("--artifacts", type=Path, default=Path("target/tmp/web-page"))
    parser.add_argument("--docs-screenshot", type=Path, default=None, help="where the main screenshot goes too")
    parser.add_argument(
        "--chromium",
        default=os.environ.get("UNCLIP_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium",
        help="the Chromium binary (Debian's `chromium` package)",
    )
    args = parser.parse_args()
    started = time.monotonic()
    run(args.url.rstrip("/"), args.artifacts, args.docs_screenshot, args.chromium)
    print(f"web page: all checks passed in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
