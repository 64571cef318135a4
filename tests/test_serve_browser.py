"""`ganpaint serve` in a real browser: headless Debian Chromium uploads a photo, paints a stroke,
fills it with a freshly trained model, and the download is checked pixel by pixel.

Marked `browser`, outside the default run: `make test-browser` (which CI runs) installs Debian's
chromium and chromium-driver when missing and fails rather than skips if the browser cannot start;
a plain `pytest -m browser` skips where chromium / chromedriver / selenium are missing.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from skimage import data

sys.path.insert(0, str(Path(__file__).parent / "scripts"))
from serve_page import chromium_missing, fill_in_browser, new_browser, serving  # noqa: E402

pytestmark = pytest.mark.browser
TINY_TRAINING = [
    "schedule.completion_steps=3",
    "schedule.discriminator_steps=1",
    "schedule.total_steps=4",
    "model.width=8",
    "model.disc_width=8",
    "model.fc_features=32",
    "data.workers=0",
    "data.batch_size=4",
    "data.val_images=4",
    "log.every_steps=2",
    "log.image_every_steps=4",
    "checkpoint.every_steps=4",
    "log.progress=none",
]


@pytest.fixture(scope="module")
def trained_run(synthetic_shards: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo config (glcic, all three phases) trained for 4 steps at width 8."""
    reason = chromium_missing()
    if reason and os.environ.get("GANPAINT_REQUIRE_BROWSER"):
        pytest.fail(f"the browser test must run here: {reason}")
    if reason:
        pytest.skip(reason)
    from ganpaint.training.loop import train_command

    run = tmp_path_factory.mktemp("browser") / "run"
    overrides = [f"data.shards={synthetic_shards}", f"run.dir={run}", *TINY_TRAINING]
    assert train_command(config="configs/demo.yaml", overrides=overrides) == 0
    return run


def test_brush_fill_and_download_in_chromium(trained_run: Path, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    photo = tmp_path / "astronaut.png"
    cv2.imwrite(str(photo), data.astronaut()[40:280, 100:420, ::-1])  # 320 x 240
    original = cv2.imread(str(photo), cv2.IMREAD_UNCHANGED)
    screenshot = tmp_path / "page.png"
    with serving([trained_run]) as (url, _):
        driver = new_browser()
        try:
            page = fill_in_browser(driver, url, photo, screenshot)
            # bad input, answered on the page: no hole painted, then a file that is no image
            message = driver.find_element(By.ID, "message")
            driver.find_element(By.ID, "clear").click()
            driver.find_element(By.ID, "fill").click()
            WebDriverWait(driver, 60).until(lambda d: message.is_displayed())
            no_hole = message.text
            (tmp_path / "notes.txt").write_text("not a photo")
            driver.find_element(By.ID, "file").send_keys(str(tmp_path / "notes.txt"))
            WebDriverWait(driver, 60).until(lambda d: "notes.txt" in message.text)
            not_an_image = message.text
        finally:
            driver.quit()
    assert not page["message"] and page["status"].startswith("Filled 320 x 240 px"), page
    result, hole = page["result"], page["hole"]
    assert result.shape == original.shape
    assert 0.01 < hole.mean() < 0.5  # the stroke was painted, and only the stroke
    np.testing.assert_array_equal(result[~hole], original[~hole])
    assert (result[hole] != original[hole]).any(axis=-1).mean() > 0.5
    assert cv2.imread(str(screenshot)).shape[1] == 1400
    assert no_hole.startswith("no hole painted")
    assert "not an image this browser can show" in not_an_image
