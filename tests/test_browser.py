"""The draw-a-digit page in a real browser: Debian's headless Chromium driven by Playwright.

Skips (with the reason) only when /usr/bin/chromium or playwright is missing; `make test`
installs Chromium where it can. Never downloads a browser.
"""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from digit_recognizer.serve import ServeConfig
from digit_recognizer.serve.app import load_served_model
from tests.test_images import drawing
from tests.test_serve import served

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

if not CHROMIUM.exists():
    pytest.skip(
        f"{CHROMIUM} not found: install Debian's chromium (make test does, as root)",
        allow_module_level=True,
    )
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")


@pytest.fixture(scope="module")
def server_url(tiny_run: Path) -> Iterator[str]:
    """The tiny run served as ``digits serve`` serves it (the model loaded first, then
    ``make_server``'s uvicorn) on 127.0.0.1 and a free port, in a thread, for this module."""
    config = ServeConfig()
    with served(tiny_run, config, load_served_model(tiny_run, config)) as port:
        yield f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def page(server_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    profile = tmp_path_factory.mktemp("chromium-profile")
    with sync_api.sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            profile,
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 800, "height": 640},
            has_touch=True,
        )
        page = context.new_page()
        page.goto(server_url)
        yield page
        context.close()
    shutil.rmtree(profile, ignore_errors=True)


def draw_stroke(page: object, points: list[tuple[float, float]]) -> None:
    """Drag the mouse through ``points`` (fractions of the canvas) with the button held."""
    box = page.locator("#pad").bounding_box()
    xy = [(box["x"] + fx * box["width"], box["y"] + fy * box["height"]) for fx, fy in points]
    page.mouse.move(*xy[0])
    page.mouse.down()
    for x, y in xy[1:]:
        page.mouse.move(x, y, steps=8)
    page.mouse.up()


def test_drawing_a_one_gets_a_prediction(page: object) -> None:
    expect = sync_api.expect
    draw_stroke(page, [(0.5, 0.15), (0.5, 0.5), (0.5, 0.85)])
    expect(page.locator("#label")).to_have_text(re.compile(r"^[0-9]$"), timeout=15_000)
    expect(page.locator("#top3 li")).to_have_count(3)
    expect(page.locator("#status")).to_contain_text("answered in")
    expect(page.locator("#model-info")).to_contain_text("Model: cnn")
    page.click("#undo")
    expect(page.locator("#label")).to_have_text("?")


def test_an_answer_arriving_after_clear_is_not_shown(page: object) -> None:
    """A request still in flight when the pad is cleared must not put its digit back."""
    expect = sync_api.expect
    page.click("#clear")
    draw_stroke(page, [(0.5, 0.15), (0.5, 0.5), (0.5, 0.85)])
    expect(page.locator("#label")).to_have_text(re.compile(r"^[0-9]$"), timeout=15_000)
    page.wait_for_function("() => !busy && !again")  # every answer so far has arrived
    held = []
    page.route("**/predict*", lambda route: held.append(route))  # answered when we say so
    try:
        box = page.locator("#pad").bounding_box()
        page.mouse.click(box["x"] + box["width"] * 0.3, box["y"] + box["height"] * 0.5)
        deadline = time.monotonic() + 15
        while not held and time.monotonic() < deadline:
            page.wait_for_timeout(20)
        assert held, "the click sent no /predict request"
        page.click("#clear")
        expect(page.locator("#label")).to_have_text("?")
        with page.expect_response("**/predict*"):
            held[0].continue_()
        page.wait_for_function("() => !busy")
        expect(page.locator("#label")).to_have_text("?")
    finally:
        page.unroute("**/predict*")


def test_uploading_an_image(page: object, tmp_path: Path) -> None:
    path = tmp_path / "one.png"
    drawing().save(path)
    page.click("#clear")
    page.set_input_files("#file", str(path))
    sync_api.expect(page.locator("#label")).to_have_text(re.compile(r"^[0-9]$"), timeout=15_000)
    sync_api.expect(page.locator("#cam-caption")).to_have_text("Heat map: where it looked")


def test_strokes_over_an_upload_keep_its_paper(page: object, tmp_path: Path) -> None:
    """A light-on-dark upload is not framed in white on the pad (the server would take the
    white for its paper and the image for ink); undone back to it, the file itself is sent."""
    expect = sync_api.expect
    path = tmp_path / "dark.png"
    drawing(size=(500, 250), ink="white", paper="black", line=(250, 30, 255, 220)).save(path)
    page.click("#clear")
    page.set_input_files("#file", str(path))
    expect(page.locator("#label")).to_have_text(re.compile(r"^[0-9]$"), timeout=15_000)
    assert page.evaluate("Array.from(ctx.getImageData(0, 0, 1, 1).data)")[:3] == [0, 0, 0]
    page.wait_for_function("() => !busy && !again")
    draw_stroke(page, [(0.2, 0.5), (0.3, 0.5)])
    stroke = page.evaluate("Array.from(ctx.getImageData(70, 140, 1, 1).data)")
    assert stroke[:3] == [255, 255, 255]  # written in the upload's own ink
    page.wait_for_function("() => !busy && !again")
    page.evaluate("""() => {
        const original = XMLHttpRequest.prototype.send;
        XMLHttpRequest.prototype.send = function (body) {
            window.lastBody = body;
            return original.call(this, body);
        };
    }""")  # fmt: skip
    page.click("#undo")
    page.wait_for_function("() => window.lastBody !== undefined && !busy")
    assert page.evaluate("lastBody instanceof File && lastBody.size") == path.stat().st_size


def test_strokes_over_a_transparent_upload_keep_its_ink(page: object, tmp_path: Path) -> None:
    """A canvas reads transparent pixels as black: taken for the paper, dark ink on nothing
    was drawn black on black, and the first stroke sent the stroke alone."""
    expect = sync_api.expect
    path = tmp_path / "transparent.png"
    one = Image.new("RGBA", (200, 200), (0, 0, 0, 0))
    ImageDraw.Draw(one).line((100, 20, 100, 180), fill=(0, 0, 0, 255), width=16)
    one.save(path)
    page.click("#clear")
    page.set_input_files("#file", str(path))
    expect(page.locator("#label")).to_have_text("1", timeout=15_000)
    assert page.evaluate("Array.from(ctx.getImageData(0, 0, 1, 1).data)")[:3] == [255, 255, 255]
    assert page.evaluate("Array.from(ctx.getImageData(140, 140, 1, 1).data)")[:3] == [0, 0, 0]
    page.wait_for_function("() => !busy && !again")
    draw_stroke(page, [(0.1, 0.1), (0.15, 0.1)])  # a speck in a corner: the 1 stays
    page.wait_for_function("() => !busy && !again")
    expect(page.locator("#label")).to_have_text("1", timeout=15_000)


def test_a_drawings_late_answer_does_not_replace_an_uploads(page: object, tmp_path: Path) -> None:
    """An upload goes out while a drawing's request is in flight: only the upload's answer shows."""
    expect = sync_api.expect
    path = tmp_path / "one.png"
    drawing().save(path)
    page.click("#clear")
    page.wait_for_function("() => !busy && !again")
    held, answers = [], []

    def hold_the_first(route: object) -> None:
        if not held:
            held.append(route)
            return
        # The file sent: an XMLHttpRequest's file body reaches a route empty
        response = route.fetch(post_data=path.read_bytes())
        answers.append(response.json())
        route.fulfill(response=response)

    page.route("**/predict*", hold_the_first)
    try:
        draw_stroke(page, [(0.3, 0.3), (0.7, 0.3), (0.4, 0.85)])  # a 7, held back
        deadline = time.monotonic() + 15
        while not held and time.monotonic() < deadline:
            page.wait_for_timeout(20)
        assert held, "the drawing sent no /predict request"
        with page.expect_response("**/predict*"):
            page.set_input_files("#file", str(path))
        expect(page.locator("#label")).to_have_text(str(answers[0]["label"]), timeout=15_000)
        assert len(answers) == 1  # the upload's: the drawing's moves queued behind its request
        upload_answer = page.locator("#top3").inner_text()
        with page.expect_response("**/predict*"):
            held[0].continue_()
        page.wait_for_timeout(200)
        assert page.locator("#top3").inner_text() == upload_answer
    finally:
        page.unroute("**/predict*")


BURST = """() => { const box = pad.getBoundingClientRect();
  for (let i = 1; i <= 10; i++) pad.dispatchEvent(new PointerEvent("pointermove", {
    pointerId: pen, clientX: box.x + box.width / 2, clientY: box.y + box.height * (0.15 + 0.07 * i),
    bubbles: true })); }"""


def test_a_burst_of_moves_sends_one_request_at_a_time(page: object) -> None:
    """Moves arriving while a stroke's PNG is being made queue behind it: the page had set
    `busy` only once the PNG was ready, so a burst sent a request for each move. The queued
    one (the pen's lift among them) goes once the first is answered."""
    page.click("#clear")
    page.wait_for_function("() => !busy && !again")
    held = []
    page.route("**/predict*", lambda route: held.append(route))
    try:
        box = page.locator("#pad").bounding_box()
        page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] * 0.15)
        page.mouse.down()
        page.evaluate(BURST)  # ten moves in one task, as a fast pen's coalesced events come
        page.mouse.up()
        page.wait_for_timeout(300)  # any PNG the moves asked for is made and sent
        assert len(held) == 1 and page.evaluate("again")
        held[0].continue_()
        deadline = time.monotonic() + 10
        while len(held) < 2 and time.monotonic() < deadline:
            page.wait_for_timeout(20)
        assert len(held) == 2, "the queued drawing was never sent"
        held[1].continue_()
    finally:
        page.unroute("**/predict*")  # lets the held request go on
    page.wait_for_function("() => !busy && !again")


def test_drawing_with_a_finger(page: object) -> None:
    """Touch input through the DevTools protocol: Chromium turns it into touch pointer events."""
    page.click("#clear")
    sync_api.expect(page.locator("#label")).to_have_text("?")
    box = page.locator("#pad").bounding_box()
    cdp = page.context.new_cdp_session(page)
    x = box["x"] + box["width"] / 2
    ys = [box["y"] + box["height"] * f for f in (0.15, 0.3, 0.45, 0.6, 0.75, 0.85)]
    cdp.send(
        "Input.dispatchTouchEvent", {"type": "touchStart", "touchPoints": [{"x": x, "y": ys[0]}]}
    )
    for y in ys[1:]:
        cdp.send(
            "Input.dispatchTouchEvent", {"type": "touchMove", "touchPoints": [{"x": x, "y": y}]}
        )
    cdp.send("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})
    sync_api.expect(page.locator("#label")).to_have_text(re.compile(r"^[0-9]$"), timeout=15_000)
    assert page.evaluate("strokes.length") == 1 and page.evaluate("strokes[0].length") >= 5


PAINTED = """() => { const canvas = document.getElementById("seen");
  const pixels = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
  return pixels.some((value) => value !== 0); }"""


def test_a_tap_is_a_dot_and_an_error_clears_the_last_digits_views(
    page: object, tmp_path: Path
) -> None:
    """A tap whose pointer reported the same spot twice (a pen's pressure changing) had drawn
    a zero-length line, nothing, and sent a blank pad; an error had left the last digit's 28x28
    and Grad-CAM views beside its "?"."""
    expect = sync_api.expect
    page.click("#clear")
    box = page.locator("#pad").bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(x, y)
    page.mouse.down()
    page.mouse.move(x, y)
    page.mouse.move(x, y)
    page.mouse.up()
    expect(page.locator("#label")).to_have_text(re.compile(r"^[0-9]$"), timeout=15_000)
    expect(page.locator("#status")).to_contain_text("answered in")
    assert page.evaluate(PAINTED)
    blank = tmp_path / "blank.png"
    Image.new("L", (64, 64), 255).save(blank)
    page.set_input_files("#file", str(blank))
    expect(page.locator("#status")).to_contain_text("blank.png: ", timeout=15_000)
    expect(page.locator("#label")).to_have_text("?")
    assert not page.evaluate(PAINTED)


def test_the_upload_is_reached_with_the_keyboard_and_errors_are_announced(page: object) -> None:
    page.focus("#clear")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "file"
    assert page.get_attribute("#status", "role") == "status"
    assert page.get_attribute("#label", "aria-live") is None  # not read out at every move


def test_ctrl_z_mid_stroke_waits_and_a_bad_answer_is_not_called_unreachable(page: object) -> None:
    """Ctrl+Z while drawing had thrown (the stroke popped under the pen) or joined strokes; a
    malformed answer had been reported as the server being unreachable."""
    expect = sync_api.expect
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.click("#clear")
    box = page.locator("#pad").bounding_box()
    page.mouse.move(box["x"] + 0.5 * box["width"], box["y"] + 0.2 * box["height"])
    page.mouse.down()
    page.mouse.move(box["x"] + 0.5 * box["width"], box["y"] + 0.5 * box["height"], steps=4)
    page.keyboard.press("Control+z")
    page.mouse.move(box["x"] + 0.5 * box["width"], box["y"] + 0.8 * box["height"], steps=4)
    page.mouse.up()
    assert errors == [] and page.evaluate("strokes.length") == 1
    page.route(
        "**/predict*",
        lambda route: route.fulfill(status=200, body="{not json", content_type="application/json"),
    )
    try:
        draw_stroke(page, [(0.3, 0.3), (0.6, 0.6)])
        expect(page.locator("#status")).to_contain_text("a bad answer from the server",
                                                        timeout=15_000)  # fmt: skip
    finally:
        page.unroute("**/predict*")


def test_an_upload_the_browser_cannot_show_is_read_and_set_aside_for_a_drawing(
    page: object, tmp_path: Path
) -> None:
    """Chromium shows no TIFF: its pad stayed blank beside the answer, drawing on it sent the
    strokes alone as if over the image, and an undo lost the image's answer."""
    expect = sync_api.expect
    path = tmp_path / "one.tiff"
    drawing().save(path)
    page.click("#clear")
    page.set_input_files("#file", str(path))
    expect(page.locator("#status")).to_contain_text("this browser cannot show the image",
                                                    timeout=15_000)  # fmt: skip
    expect(page.locator("#label")).to_have_text(re.compile(r"^[0-9]$"))
    draw_stroke(page, [(0.2, 0.2), (0.8, 0.2)])
    expect(page.locator("#status")).to_contain_text("answered in", timeout=15_000)
    assert page.evaluate("uploadedFile") is None  # set aside: the drawing is what is sent


def test_a_server_that_does_not_answer_is_said_to_be_waited_on_then_given_up(
    page: object,
) -> None:
    expect = sync_api.expect
    page.click("#clear")
    page.clock.install()
    page.route("**/predict*", lambda route: None)  # never answered
    try:
        draw_stroke(page, [(0.5, 0.2), (0.5, 0.8)])
        page.clock.run_for(1_500)
        expect(page.locator("#status")).to_have_text("waiting for the server…")
        page.clock.run_for(20_000)
        expect(page.locator("#status")).to_contain_text("no answer from the server in 20 s; "
                                                        "draw again to retry")  # fmt: skip
    finally:
        page.unroute("**/predict*")
        page.clock.resume()


def test_a_slow_upload_is_waited_for_while_it_goes_out(page: object, tmp_path: Path) -> None:
    """The 20 s given to a request counted its upload: a photo of a few MB over a slow uplink
    was given up while it was still arriving, at every retry. Here 600 kB go out at 250 kB/s
    while the page's clock runs 3 s for every 0.15 s: over 20 s of its time."""
    path = tmp_path / "one.bmp"  # uncompressed: as big as a photo, for its size
    drawing(size=(780, 780), mode="L", line=(390, 100, 390, 680)).save(path)
    page.click("#clear")
    page.wait_for_function("() => !busy && !again")
    network = page.context.new_cdp_session(page)
    slow = {"offline": False, "latency": 0, "downloadThroughput": -1, "uploadThroughput": 250_000}
    network.send("Network.emulateNetworkConditions", slow)
    page.clock.install()
    try:
        page.set_input_files("#file", str(path))
        page.wait_for_function("() => busy")
        sent_at = page.evaluate("performance.now()")
        while page.evaluate("busy"):
            page.clock.run_for(3_000)
            time.sleep(0.15)
        assert page.evaluate("performance.now()") - sent_at > 20_000  # it took longer than that
        sync_api.expect(page.locator("#label")).to_have_text("1")
    finally:
        network.send("Network.emulateNetworkConditions", slow | {"uploadThroughput": -1})
        network.detach()
        page.clock.resume()


def test_the_api_docs_render_with_nothing_fetched_from_elsewhere(
    page: object, server_url: str
) -> None:
    """Swagger's page at /docs lists the API's operations with every request to another host
    refused: its scripts had come from a CDN, and the page stayed blank offline."""
    docs = page.context.new_page()
    refused = []
    docs.route(re.compile(r"^https?://(?!127\.0\.0\.1[:/])"),
               lambda route: (refused.append(route.request.url), route.abort()))  # fmt: skip
    try:
        docs.goto(f"{server_url}/docs")
        sync_api.expect(docs.locator(".opblock-summary-path").first).to_be_visible(timeout=15_000)
        paths = docs.locator(".opblock-summary-path").all_inner_texts()
        assert {"/predict", "/health"} <= {path.strip().replace("\u200b", "") for path in paths}
        assert refused == []
    finally:
        docs.close()


CLEAR_MID_STROKE = """() => { const box = pad.getBoundingClientRect();
  pad.dispatchEvent(new PointerEvent("pointermove", { pointerId: pen, bubbles: true,
    clientX: box.x + box.width / 2, clientY: box.y + box.height * 0.8 }));
  document.getElementById("clear").click(); }"""


def test_an_upload_cleared_while_its_strokes_png_is_made_leaves_the_pad_working(
    page: object, tmp_path: Path
) -> None:
    """A stroke over an upload, cleared before its PNG came back: that PNG is not sent, and the
    request it held the page's turn for must give the turn back, or every later drawing waits
    behind it for good."""
    path = tmp_path / "one.png"
    drawing().save(path)
    page.click("#clear")
    page.wait_for_function("() => !busy && !again")
    with page.expect_response("**/predict*"):
        page.set_input_files("#file", str(path))
    page.wait_for_function("() => !busy && !again")
    box = page.locator("#pad").bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] * 0.2)
    page.mouse.down()
    page.evaluate(CLEAR_MID_STROKE)  # the move asks for a PNG; the clear comes before it
    page.mouse.up()
    page.wait_for_function("() => !busy && !again", timeout=5_000)
    with page.expect_response("**/predict*", timeout=10_000):
        draw_stroke(page, [(0.5, 0.15), (0.5, 0.85)])
    page.wait_for_function("() => !busy && !again")


def test_a_stroke_on_a_pad_inside_a_text_selection_is_drawn_whole(page: object) -> None:
    """A stroke begun above the pad selects the page down through it; the next stroke's press
    then started dragging that selection, which cancelled the pointer after its first move."""
    page.click("#clear")
    box = page.locator("#pad").bounding_box()
    x = box["x"] + box["width"] / 2
    page.mouse.move(x, box["y"] - 50)  # on the header's text
    page.mouse.down()
    page.mouse.move(x, box["y"] + box["height"] + 200, steps=10)
    page.mouse.up()
    page.wait_for_function("() => !busy && !again")
    page.focus("#clear")
    assert page.evaluate("window.getSelection().containsNode(pad, true)")
    draw_stroke(page, [(0.5, 0.15), (0.5, 0.85)])
    assert page.evaluate("strokes.length") == 1
    assert page.evaluate("strokes[0].at(-1)[1]") == pytest.approx(0.85 * 280)
    # The press still takes the focus off a button clicked before, which Space would press.
    assert page.evaluate("document.activeElement === document.body")
    page.evaluate("window.getSelection().removeAllRanges()")
    page.wait_for_function("() => !busy && !again")


HOLD_DECODING = """() => { window.decode = window.createImageBitmap;
  window.createImageBitmap = (file) => new Promise((resolve, reject) => {
    window.finishDecoding = () => decode(file).then(resolve, reject); }); }"""


def test_an_upload_cleared_while_it_decodes_stays_cleared(page: object, tmp_path: Path) -> None:
    """A photo takes a while to decode: Clear pressed meanwhile had the upload come back once
    decoded, and sent, as if chosen after the Clear."""
    path = tmp_path / "one.png"
    drawing().save(path)
    page.click("#clear")
    page.wait_for_function("() => !busy && !again")
    sent = []

    def note(request: object) -> None:
        if "/predict" in request.url:
            sent.append(request.url)

    page.on("request", note)
    page.evaluate(HOLD_DECODING)
    try:
        page.set_input_files("#file", str(path))
        page.wait_for_function("() => window.finishDecoding !== undefined")
        page.click("#clear")
        page.evaluate("finishDecoding()")
        page.wait_for_timeout(300)
        assert page.evaluate("uploadedFile") is None and sent == []
        sync_api.expect(page.locator("#label")).to_have_text("?")
    finally:
        page.evaluate("() => { window.createImageBitmap = decode; delete window.finishDecoding; }")
        page.remove_listener("request", note)


DROP = """async (bytes) => {
  const files = new DataTransfer();
  files.items.add(new File([new Uint8Array(bytes)], "dropped.png", { type: "image/png" }));
  const options = { dataTransfer: files, bubbles: true, cancelable: true };
  const over = new DragEvent("dragover", options);
  pad.dispatchEvent(over);
  pad.dispatchEvent(new DragEvent("drop", options));
  return over.defaultPrevented; }"""


def test_an_image_dropped_on_the_page_is_uploaded(page: object, tmp_path: Path) -> None:
    """Left to the browser, a dropped file replaced the page, losing the drawing."""
    path = tmp_path / "one.png"
    drawing().save(path)
    page.click("#clear")
    page.wait_for_function("() => !busy && !again")
    with page.expect_response("**/predict*"):
        assert page.evaluate(DROP, list(path.read_bytes()))  # the browser's own drop is off
    sync_api.expect(page.locator("#label")).to_have_text(re.compile(r"^[0-9]$"), timeout=15_000)
    assert page.evaluate("uploadedFile.name") == "dropped.png"
