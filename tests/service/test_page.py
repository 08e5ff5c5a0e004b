"""The page at ``GET /``: its files and headers over HTTP, then the page itself in a real headless Chromium
(Debian's ``chromium`` driven by Playwright; marked ``browser``, skipped with the reason when either is missing) on
a served tiny random model (with a block whose title and text are HTML) and on the bundled default.

``REALMQA_SCREENSHOT=FILE.png pytest -m browser -k bundled`` also saves the page answering the Super Bowl 50
question (the one in ``docs/``)."""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from index.home import Home
from index.pipeline import build_from_corpus
from service.app import DOCS_STATIC, create_app
from service.client import Client
from service.registry import Registry, model_versions
from service.routes.page import FILES, STATIC
from service.settings import Settings
from tests.conftest import BUNDLED_HOME
from tests.service.blocking_engine import BlockingEngine
from tests.service.serve_thread import serve_in_thread
from tests.service.test_client import held
from tests.service.tiny_home import write_corpus, write_model

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
MODEL = "tiny-with-a-name-long-enough-to-test-a-narrow-screen"
HTML_BLOCK = {"id": "evil<b>1</b>", "title": "<script>window.pwned = 1</script>",
              "text": "alpha bravo <img src=x onerror=\"window.pwned = 1\"> charlie & delta"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A tiny random model over 30 blocks plus one whose title and text are HTML, served."""
    home = tmp_path_factory.mktemp("tiny")
    write_model(home / "models" / MODEL / "1", seed=1)
    write_corpus(home / "corpus.jsonl", 30)
    with (home / "corpus.jsonl").open("a") as f:
        f.write(json.dumps(HTML_BLOCK) + "\n")
    build_from_corpus(Home(home), MODEL, f"{MODEL}/1", home / "corpus.jsonl")
    with serve_in_thread(create_app(Settings(home=home, build_missing_index=False))) as url:
        yield url


def test_page_files_and_headers(tiny: str) -> None:
    r = httpx.get(tiny + "/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    csp = r.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp and "connect-src 'self'" in csp
    assert r.headers["x-content-type-options"] == "nosniff"
    for name in re.findall(r'(?:src|href)="/static/([^"]+)"', r.text):
        s = httpx.get(f"{tiny}/static/{name}")
        assert s.status_code == 200 and s.headers["content-type"].startswith(FILES[name]), name
    assert set(re.findall(r'(?:src|href)="/static/([^"]+)"', r.text)) == set(FILES)
    for bad in ("index.html", "nope.js"):
        e = httpx.get(f"{tiny}/static/{bad}")
        assert e.status_code == 404 and e.json()["error"] == {
            "type": "not_found", "message": f"no static file {bad!r}", "param": "name"}
    assert httpx.get(f"{tiny}/static/..%2Fclient.py").status_code == 404


def test_page_fetches_nothing_from_elsewhere_and_inserts_no_html() -> None:
    for f in STATIC.iterdir():
        text = f.read_text()
        assert not re.search(r"(?:src|href|url)\s*[=(]\s*[\"']?(?:https?:)?//", text), f.name
        assert not re.search(r"innerHTML|outerHTML|insertAdjacentHTML|document\.write|eval\(", text), f.name


def test_api_pages_load_their_files_from_the_service(tiny: str) -> None:
    """/docs and /redoc name no other host: Swagger UI's and ReDoc's files come from the service (fastapi-offline)."""
    for path, kinds in (("/docs", {"javascript", "css", "png"}), ("/redoc", {"javascript", "png"})):
        r = httpx.get(tiny + path)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html"), path
        assert not re.search(r"(?:https?:)?//[a-z]", r.text.replace("http://www.w3.org", "")), path
        urls = set(re.findall(r"""(?:src|href|url)\s*[=:(]\s*['"](/[^'"]+)['"]""", r.text))
        assert "/openapi.json" in urls, path
        seen = set()
        for u in urls - {"/openapi.json"}:
            assert u.startswith(DOCS_STATIC + "/"), (path, u)
            f = httpx.get(tiny + u)
            assert f.status_code == 200 and len(f.content) > 1000, u
            seen |= {k for k in kinds if k in f.headers["content-type"]}
        assert seen == kinds, (path, seen)
    e = httpx.get(f"{tiny}{DOCS_STATIC}/nope.js")
    assert e.status_code == 404 and e.json()["error"]["type"] == "not_found"


# --- in a real Chromium ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no {CHROMIUM} (Debian: apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


class Page:
    """A browser page on ``url`` that records console errors and uncaught exceptions."""

    def __init__(self, browser: Any, url: str, width: int = 1000, height: int = 900) -> None:
        self.page = browser.new_page(viewport={"width": width, "height": height})
        self.errors: list[str] = []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(f"uncaught: {e}"))
        self.page.goto(url + "/")
        # (wait_for_function would poll with eval, which the page's CSP refuses)
        self.page.wait_for_selector("#model option:nth-child(2)", state="attached")

    def ask(self, question: str) -> None:
        self.page.fill("#question", question)
        self.page.focus("#question")
        self.page.keyboard.press("Enter")

    def ask_error(self, question: str, status: int) -> dict[str, Any]:
        """Ask; the response must be ``status`` and the page must show its error shape. Returns the error."""
        with self.page.expect_response(lambda r: r.url.endswith(("/answer", "/retrieve"))) as info:
            self.ask(question)
        assert info.value.status == status
        e: dict[str, Any] = info.value.json()["error"]
        self.page.wait_for_selector(f"#error:not([hidden]) .message:has-text('{status}')")
        assert self.page.text_content("#error .message") == (
            f"{status} {e['type']}: {e['message']}" + (f" (field: {e['param']})" if e["param"] else ""))
        assert self.page.text_content("#error .request-id") == f"request id {info.value.headers['x-request-id']}"
        return e


@pytest.mark.browser
def test_browser_answer_candidates_retrieval_error_on_tiny_model(browser: Any, tiny: str) -> None:
    pg = Page(browser, tiny)
    page = pg.page
    assert f"{MODEL}/1 on index {MODEL}/1" in page.text_content("#served")
    q = "who won alpha bravo"
    expected = Client(tiny).answer(q, reader_beam_size=5)
    pg.ask(q)
    page.wait_for_selector("#answer-text")
    assert page.text_content("#answer-text") == expected.answer
    assert page.text_content(".answer mark") == expected.answer
    assert page.text_content(".answer .block-text") == expected.block.text
    assert page.text_content(".answer .block-head .title") == expected.block.title
    # the other candidates, each opened from the keyboard
    assert page.locator(".candidates details").count() == len(expected.candidates) - 1 == 4
    page.focus(".candidates li:first-child summary")
    page.keyboard.press("Enter")
    assert page.locator(".candidates li:first-child details").get_attribute("open") is not None
    c = expected.candidates[1]
    assert page.text_content(".candidates li:first-child mark") == c.answer
    assert page.text_content(".candidates li:first-child .block-text") == c.block.text
    assert "read" in page.text_content(".timings") and f"model {MODEL}/1" in page.text_content(".served-by")
    # retrieval only, k = all 31 blocks: the HTML block shows as text and runs nothing
    page.check("input[name=mode][value=retrieve]")
    page.fill("#k", "31")
    pg.ask("alpha bravo charlie")
    page.wait_for_selector(".blocks")
    assert page.locator(".blocks > li").count() == 31
    assert HTML_BLOCK["title"] in page.text_content(".blocks")
    assert HTML_BLOCK["text"] in page.text_content(".blocks")
    assert page.locator("#result img, #result script, #result b").count() == 0
    assert page.evaluate("window.pwned") is None
    # an over-long question: the error shape's message
    page.check("input[name=mode][value=answer]")
    e = pg.ask_error("alpha " * 400, 413)
    assert e["param"] == "question" and "2400" in e["message"]
    assert page.text_content("#result") == ""
    assert [e for e in pg.errors if "status of 413" not in e] == [], pg.errors  # Chromium logs the 413 itself
    page.close()


@pytest.mark.browser
def test_browser_narrow_screen_keyboard_only(browser: Any, tiny: str) -> None:
    pg = Page(browser, tiny, width=360, height=740)
    page = pg.page
    page.keyboard.type("who won")  # the question box has the focus on load
    page.keyboard.press("Enter")
    page.wait_for_selector("#answer-text")
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    overflowing = page.evaluate("[...document.querySelectorAll('body *')].filter("
                                "e => e.getBoundingClientRect().right > window.innerWidth).map(e => e.outerHTML)")
    assert overflowing == []
    assert pg.errors == []
    page.close()


@pytest.mark.browser
def test_browser_shows_429_and_504(browser: Any, tmp_path: Path) -> None:
    """A blocking engine holds one request and one waits in the queue (size 1): the page's question is refused
    (429); once the queued one has passed its deadline, the page's question waits in the queue past its own (504)."""
    (tmp_path / "models").mkdir()
    engine = BlockingEngine()
    app = create_app(Settings(home=tmp_path, max_batch_size=1, max_queue_size=1, max_queue_delay_ms=0,
                              retry_after_s=1, request_timeout_ms=1500), Registry({"fake": engine}))
    with serve_in_thread(app) as url:
        pg = Page(browser, url)  # loaded first: on a loaded machine loading took longer than the queued one's 1.5 s
        with held(url, app, engine):
            assert pg.ask_error("Denver won", 429)["type"] == "overloaded"
            assert "retry after 1 s" in pg.page.text_content("#error")
            while app.state.batcher.depth():  # the queued request expires after 1.5 s
                time.sleep(0.05)
            assert pg.ask_error("Denver won again", 504)["type"] == "deadline_exceeded"
            assert "longer than the deadline" in pg.page.text_content("#error")
            assert [e for e in pg.errors if not re.search("status of (429|504)", e)] == [], pg.errors
            pg.page.close()


@pytest.mark.browser
def test_browser_bundled_default_answers_super_bowl_50(browser: Any) -> None:
    with serve_in_thread(create_app(Settings()), timeout_s=600) as url:
        pg = Page(browser, url)
        page = pg.page
        newest = model_versions(BUNDLED_HOME, "minilm-squad")[-1]
        assert f"minilm-squad/{newest}" in page.text_content("#served")
        pg.ask("Which NFL team represented the AFC at Super Bowl 50?")
        page.wait_for_selector("#answer-text", timeout=60_000)
        assert page.text_content(".answer mark") == "Denver Broncos"
        assert page.text_content(".answer .block-head .title") == "Super Bowl 50"
        if os.environ.get("REALMQA_SCREENSHOT"):
            page.focus(".candidates li:first-child summary")
            page.keyboard.press("Enter")
            page.screenshot(path=os.environ["REALMQA_SCREENSHOT"], full_page=True)
        assert pg.errors == []
        page.close()


@pytest.mark.browser
def test_browser_api_docs_render_with_no_other_host(browser: Any, tiny: str) -> None:
    """Swagger UI at /docs renders every operation of the contract while the browser may reach only the service."""
    page = browser.new_page()
    elsewhere: list[str] = []

    def only_the_service(route: Any) -> None:
        if route.request.url.startswith(tiny):
            route.continue_()
        else:
            elsewhere.append(route.request.url)
            route.abort()

    page.route("**/*", only_the_service)
    page.goto(tiny + "/docs")
    page.wait_for_selector(".opblock-summary-path", timeout=30_000)
    paths = {p.strip("\u200b") for p in page.locator(".opblock-summary-path").all_inner_texts()}
    schema = httpx.get(tiny + "/openapi.json").json()
    assert paths == set(schema["paths"]) and {"/answer", "/retrieve"} <= paths
    assert "realmqa" in page.text_content(".info .title")
    assert elsewhere == []
    page.close()
