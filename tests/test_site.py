"""The built documentation site: it covers the whole public API and renders in a real browser.

The site is built once (``mkdocs build --strict``) into a temporary folder. Then:

* every public name of ``unifiedops`` and ``zoo`` must be in the site's object inventory
  (``objects.inv``, written by mkdocstrings), i.e. rendered on an API page;
* headless Chromium (Debian's ``chromium``, driven by Playwright) opens the home page, the presets
  gallery, the concepts page with its diagrams, the zoo table and an API page from a local HTTP
  server, with no network, and fails on any console error, uncaught page error or failed request.
  Screenshots go to ``docs/_build_check/`` (git-ignored) for a person to look at.

Without Chromium or Playwright the browser test is skipped, unless ``UNIFIEDOPS_REQUIRE_BROWSER=1``
(CI sets it), which turns the skip into a failure.
"""

from __future__ import annotations

import functools
import http.server
import os
import shutil
import subprocess
import sys
import threading
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from public_api import public_names

ROOT = Path(__file__).resolve().parent.parent
SCREENSHOTS = ROOT / "docs" / "_build_check"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

# The pages the issue names (home, a presets page, an API page), and the two with generated figures.
PAGES = {
    "home": "",
    "presets": "presets/",
    "api_aggregation": "api/aggregation/",
    "concepts": "concepts/",
    "zoo": "zoo/",
}

# Flags for a root user in a sandbox without a network: no sandboxing, no background connections.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site")
    mkdocs = [sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "--site-dir", str(out)]
    result = subprocess.run(
        mkdocs, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    )
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stdout}\n{result.stderr}"
    return out


def _inventory(site: Path) -> set[str]:
    """Object names in a Sphinx inventory (version 2): four header lines, then zlib-compressed lines."""
    raw = (site / "objects.inv").read_bytes()
    header_end = 0
    for _ in range(4):
        header_end = raw.index(b"\n", header_end) + 1
    lines = zlib.decompress(raw[header_end:]).decode("utf-8").splitlines()
    return {line.split(" ", 1)[0] for line in lines if line.strip()}


def test_api_reference_covers_every_public_name(site: Path) -> None:
    import zoo

    # The models' timm entrypoints (``zoo.van.van_b0``...) are generated at import time, so
    # mkdocstrings cannot render them from the source; the zoo table, generated from the registry,
    # lists every one instead.
    models = set(zoo.list_models())
    rendered = _inventory(site)
    missing = [p.path for p in public_names() if p.path not in rendered and p.name not in models]
    assert not missing, f"public names not rendered on any API page: {missing}"
    zoo_page = (site / "zoo" / "index.html").read_text(encoding="utf-8")
    unlisted = sorted(name for name in models if f"<code>{name}</code>" not in zoo_page)
    assert not unlisted, f"zoo models missing from the zoo table: {unlisted}"


@pytest.fixture(scope="module")
def server(site: Path) -> Iterator[str]:
    handler = functools.partial(_QuietHandler, directory=str(site))
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) as httpd:
        thread = threading.Thread(target=httpd.serve_forever, daemon=True)
        thread.start()
        yield f"http://127.0.0.1:{httpd.server_address[1]}/"
        httpd.shutdown()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


def _require_browser() -> None:
    missing = []
    if CHROMIUM is None:
        missing.append("chromium (apt-get install chromium)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing.append("playwright (pip install playwright)")
    if missing:
        message = "the browser check needs " + " and ".join(missing)
        if os.environ.get("UNIFIEDOPS_REQUIRE_BROWSER") == "1":
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    _require_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.mark.parametrize("name", list(PAGES))
def test_page_renders_without_errors(name: str, server: str, browser) -> None:
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    problems: list[str] = []
    page.on(
        "console",
        lambda message: problems.append(f"console {message.type}: {message.text}") if message.type == "error" else None,
    )
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    page.on("requestfailed", lambda request: problems.append(f"request failed: {request.url} ({request.failure})"))
    page.on(
        "response",
        lambda response: problems.append(f"HTTP {response.status}: {response.url}") if response.status >= 400 else None,
    )
    try:
        response = page.goto(server + PAGES[name], wait_until="networkidle")
        assert response is not None and response.ok
        assert page.locator("article h1").first.inner_text().strip(), "the page has no title: it did not render"
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)
    finally:
        page.close()
    assert not problems, "\n".join(problems)


def test_browser_check_sees_errors(server: str, browser, site: Path) -> None:
    """The listeners above catch what they should: a page with a script error and a missing file."""
    (site / "broken.html").write_text(
        "<html><body><h1>x</h1><script>undefined_function()</script><img src='missing.png'></body></html>"
    )
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("response", lambda response: errors.append(response.url) if response.status >= 400 else None)
    page.goto(server + "broken.html", wait_until="networkidle")
    page.close()
    assert any("undefined_function" in e for e in errors) and any("missing.png" in e for e in errors)
