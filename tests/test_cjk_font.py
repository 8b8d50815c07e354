"""Headless Chromium draws Chinese center and camera names (issue 16, item 12).

Without a CJK font every Chinese character is drawn as the same empty box; scripts/setup.sh installs
one. The check draws names on a canvas in the real Debian Chromium and compares the pixels.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.test_web_wall import CHROMIUM, CHROMIUM_ARGS

pw = pytest.importorskip("playwright.sync_api")
ROOT = Path(__file__).resolve().parent.parent
#: Debian packages that give Chromium (through fontconfig) glyphs for Chinese.
CJK_FONTS = {"fonts-noto-cjk", "fonts-wqy-zenhei", "fonts-wqy-microhei", "fonts-arphic-ukai"}

DRAW = """(chars) => chars.map((ch) => {
  const c = document.createElement("canvas");
  c.width = c.height = 64;
  const g = c.getContext("2d");
  g.fillStyle = "#fff"; g.fillRect(0, 0, 64, 64);
  g.fillStyle = "#000"; g.font = "48px sans-serif"; g.textBaseline = "top";
  g.fillText(ch, 4, 4);
  return c.toDataURL();
})"""


def test_setup_installs_a_cjk_font() -> None:
    setup = (ROOT / "scripts/setup.sh").read_text(encoding="utf-8")
    apt = re.search(r"APT_PACKAGES=\(([^)]*)\)", setup)
    assert apt and set(apt.group(1).split()) & CJK_FONTS, "scripts/setup.sh installs no CJK font"


def test_chromium_draws_chinese_names_not_boxes() -> None:
    names = ["太", "仓", "城", "厢", "镇", "沙", "溪"]  # 太仓市 城厢镇 沙溪镇
    with pw.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.set_content("<!doctype html><meta charset=utf-8><body></body>")
            images = page.evaluate(DRAW, names)
            blank = page.evaluate(DRAW, [" "])[0]
        finally:
            browser.close()
    assert blank not in images, "a character drew nothing"
    assert len(set(images)) == len(names), "Chinese characters are drawn as identical boxes: install a CJK font " \
        "(scripts/setup.sh installs fonts-noto-cjk)"
