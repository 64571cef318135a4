"""Drive `ganpaint serve` as a user would: start it, upload a photo in headless Chromium, paint a
stroke, press Fill, read back the download and the painted mask, take a screenshot.

Used by tests/test_serve.py and tests/test_serve_browser.py, and by `make screenshot`:

    python tests/scripts/serve_page.py --run runs/demo --output docs/serve.jpg

Chromium is Debian's (apt-get install chromium chromium-driver), driven by Selenium; nothing is
downloaded (Selenium Manager is kept offline).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[2]
# Debian's paths; elsewhere (Ubuntu's chromium-browser, ...) point these variables at the binaries
CHROMIUM = os.environ.get("GANPAINT_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("GANPAINT_CHROMEDRIVER", "/usr/bin/chromedriver")
START_TIMEOUT_S = 90


def chromium_missing() -> str | None:
    """Why the browser cannot run here, or None."""
    for binary in (CHROMIUM, CHROMEDRIVER):
        if shutil.which(binary) is None:
            return f"{binary} not installed (apt-get install chromium chromium-driver)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium not installed (pip install 'ganpaint[dev]')"
    return None


@contextlib.contextmanager
def serving(runs: list[Path], *extra: str) -> Iterator[tuple[str, list[str]]]:
    """Run `ganpaint serve --port 0` on `runs`; yield (base URL, the lines it printed so far).

    The server is stopped (SIGTERM, then SIGKILL) on exit; its output keeps being collected.
    """
    command = [sys.executable, "-c", "import sys; from ganpaint.cli import main; sys.exit(main())"]
    command += ["serve", "--port", "0", "--device", "cpu", *extra]
    for run in runs:
        command += ["--run", str(run)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    server = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    lines: list[str] = []
    arrived: queue.Queue[str | None] = queue.Queue()

    def collect() -> None:
        for line in server.stdout:
            lines.append(line.rstrip("\n"))
            arrived.put(line)
        arrived.put(None)

    threading.Thread(target=collect, daemon=True).start()
    try:
        url, deadline = None, time.monotonic() + START_TIMEOUT_S
        while url is None:
            line = arrived.get(timeout=max(0.1, deadline - time.monotonic()))
            if line is None:
                raise RuntimeError("ganpaint serve exited:\n" + "\n".join(lines))
            if " at http://" in line:
                url = line.split(" at ", 1)[1].strip()
        yield url, lines
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def multipart(fields: dict[str, bytes | str]) -> tuple[bytes, str]:
    """A multipart/form-data body (bytes fields as files) and its Content-Type."""
    boundary = "ganpaint-test-boundary"
    parts = []
    for name, value in fields.items():
        if isinstance(value, bytes):
            head = f'Content-Disposition: form-data; name="{name}"; filename="{name}.png"\r\n'
            head += "Content-Type: application/octet-stream\r\n\r\n"
            parts.append(f"--{boundary}\r\n{head}".encode() + value + b"\r\n")
        else:
            head = f'Content-Disposition: form-data; name="{name}"\r\n\r\n'
            parts.append(f"--{boundary}\r\n{head}{value}\r\n".encode())
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def new_browser(width: int = 1400, height: int = 1000):
    """Headless Debian Chromium through its chromedriver (no Selenium Manager download)."""
    os.environ["SE_OFFLINE"] = "true"
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(argument)
    options.add_argument(f"--window-size={width},{height}")
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_script_timeout(60)
    return driver


def _decode_data_url(url: str) -> np.ndarray:
    encoded = url.split(",", 1)[1]
    return cv2.imdecode(np.frombuffer(base64.b64decode(encoded), np.uint8), cv2.IMREAD_UNCHANGED)


def fill_in_browser(driver, url: str, photo: Path, screenshot: Path | None) -> dict:
    """Upload `photo`, paint one stroke across its middle, Fill; return what the page shows.

    Returns {"result": the downloaded PNG decoded (BGR), "hole": bool mask as painted,
    "status": the status line, "message": the error line}.
    """
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(driver, 60)
    driver.get(url)
    wait.until(
        lambda d: d.execute_script("return document.querySelectorAll('#model option').length")
    )
    driver.find_element(By.ID, "file").send_keys(str(photo))
    wait.until(expected_conditions.element_to_be_clickable((By.ID, "fill")))
    mask = driver.find_element(By.ID, "mask")
    width = mask.size["width"]
    # a stroke from a third to two thirds of the way across, slightly tilted (offsets: from centre)
    ActionChains(driver).move_to_element_with_offset(
        mask, -width // 6, 0
    ).click_and_hold().move_by_offset(width // 6, -8).move_by_offset(
        width // 6, 12
    ).release().perform()
    driver.find_element(By.ID, "fill").click()
    wait.until(
        lambda d: (
            d.find_element(By.ID, "download").is_displayed()
            or d.find_element(By.ID, "message").is_displayed()
        )
    )
    message = driver.find_element(By.ID, "message")
    page = {
        "status": driver.find_element(By.ID, "status").text,
        "message": message.text if message.is_displayed() else "",
    }
    if not page["message"]:
        page["result"] = _decode_data_url(
            driver.find_element(By.ID, "download").get_attribute("href")
        )
        painted = _decode_data_url(driver.execute_script("return arguments[0].toDataURL()", mask))
        page["hole"] = painted[..., 3] > 127
        wait.until(
            lambda d: d.execute_script("return document.querySelector('#result-pyramid').complete")
        )
    if screenshot is not None:  # PNG, or JPEG for a .jpg name (small enough to commit)
        screenshot.parent.mkdir(parents=True, exist_ok=True)
        shot = cv2.imdecode(
            np.frombuffer(driver.get_screenshot_as_png(), np.uint8), cv2.IMREAD_COLOR
        )
        cv2.imwrite(str(screenshot), shot, [cv2.IMWRITE_JPEG_QUALITY, 85])
    return page


def main() -> int:
    parser = argparse.ArgumentParser(description="screenshot of ganpaint serve after one fill")
    parser.add_argument("--run", action="append", required=True, type=Path)
    parser.add_argument("--photo", type=Path, help="default: a crop of skimage's astronaut")
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "serve.jpg")
    parser.add_argument("--size", default="1400x640", help="browser window, WIDTHxHEIGHT")
    args = parser.parse_args()
    reason = chromium_missing()
    if reason:
        print(f"serve_page: {reason}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as scratch, serving(args.run) as (url, _):
        photo = args.photo
        if photo is None:
            from skimage import data

            photo = Path(scratch) / "astronaut.png"
            cv2.imwrite(str(photo), data.astronaut()[20:340, 60:540, ::-1])
        driver = new_browser(*(int(side) for side in args.size.split("x")))
        try:
            page = fill_in_browser(driver, url, photo, args.output)
        finally:
            driver.quit()
    print(page["message"] or page["status"])
    print(f"screenshot: {args.output}")
    return 0 if not page["message"] else 1


if __name__ == "__main__":
    sys.exit(main())
