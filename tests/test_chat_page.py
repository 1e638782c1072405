"""The chat page at `/` in a real headless browser: Debian's chromium + chromedriver driven by
selenium, against real servers (uvicorn in a thread) on real models.

- the embedded default model: a streamed reply grows on screen and shows its tokens/s; a long
  reply is stopped (the server aborts it and frees its KV blocks); a conversation; New chat.
- a tiny checkpoint built here whose weights make decoding spell a chosen reply, markup and a
  fenced code block included: the reply goes through the server and the page's model-output path
  and must show literally, with no element created from it.
- the same checkpoint behind --api-key: the page asks for the key, a wrong one gets a clear
  message and is asked for again, the refused message is sent once the key is right.

Without chromium the browser tests skip, unless MPT_LITE_REQUIRE_BROWSER=1 (CI, after
scripts/install_chromium.sh), where a missing browser is a failure."""
import os
import re
import shutil
import time
from pathlib import Path

import httpx
import pytest
from checkpoints import successor_lm

import mpt_lite
from mpt_lite.server import create_app, server_thread
from mpt_lite.text.chat_encode import encode_chat
from mpt_lite.text.tokenizer import MptTokenizer

DEFAULT_MODEL = Path(mpt_lite.__file__).parent / "default_model"
# The default model's greedy reply to this runs on past 480 tokens (a loop in its body); after its chat
# fine-tune it ends most replies within a few dozen tokens (this one was found among the 8% of held-out
# requests it does not end: another default model may need another request). Chosen to loop past 600
# tokens with the avx512 and avx2 kernels here: the rounding of a 4-bit greedy model decides where a
# reply ends.
LONG_REQUEST = "Implement finish_off(self): Create additional useful structures."
# Another such request for the Stop test: the same one again would reuse the first test's cached prefix,
# and a prompt computed in other steps may round differently and end its reply (a greedy 4-bit model).
ENDLESS_REQUEST = "Produce text documentation for a data object. Call the function docother."
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
KEY = "s3cret-key"
ASK = "Say something tricky."
# What the spelling model answers to ASK. Markup that would run script if it were parsed as HTML,
# then a fenced code block. (Chosen so that it has a spelling with no token used twice: the
# model's next token depends only on the current one.)
TRICKY = "Sure: <script>alert(1)</script>' \"<img src=\"x\" onerror=print()>\", ok.\n\n ```py\n  y = 2\n   ```"
TRICKY_PROSE = TRICKY[:TRICKY.index("\n\n")]
PREFER_ORDER = 16  # longest token piece tried first


def browser_paths():
    """(chromium, chromedriver), or a skip (a failure under MPT_LITE_REQUIRE_BROWSER=1)."""
    required = os.environ.get("MPT_LITE_REQUIRE_BROWSER") == "1"
    problem = None
    try:
        import selenium  # noqa: F401
    except ImportError:
        problem = "selenium is not installed (pip install selenium; it is in the `test` extra)"
    chromium = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
    driver = shutil.which("chromedriver")
    if problem is None and not (chromium and driver):
        problem = "chromium and chromedriver are not installed (scripts/install_chromium.sh)"
    if problem is not None:
        if required:
            pytest.fail(f"MPT_LITE_REQUIRE_BROWSER=1 but {problem}")
        pytest.skip(problem)
    return chromium, driver


# ---- a checkpoint that spells a chosen reply ----

def distinct_spelling(tok, text: str, banned: set) -> list:
    """Token ids that decode to `text`, none used twice and none in `banned` (a depth-first search
    over the vocabulary's pieces, longest first)."""
    pieces: dict = {}
    for i in range(tok.vocab_size):
        piece = tok.decode([i])
        if piece and "\ufffd" not in piece and i not in banned:
            pieces.setdefault(piece, []).append(i)

    def search(pos: int, used: set):
        if pos == len(text):
            return []
        for n in range(min(PREFER_ORDER, len(text) - pos), 0, -1):
            for i in pieces.get(text[pos:pos + n], ()):
                if i not in used:
                    used.add(i)
                    rest = search(pos + n, used)
                    if rest is not None:
                        return [i] + rest
                    used.discard(i)
        return None

    ids = search(0, set())
    assert ids is not None and tok.decode(ids) == text, "no spelling without a repeated token"
    return ids


def spelling_checkpoint(path: Path, prompt: list, reply: str) -> Path:
    """A one-block MPT (checkpoints.successor_lm) whose greedy (and, with its margins,
    any-temperature) continuation of `prompt` is `reply` then <|im_end|>."""
    tok = MptTokenizer.from_pretrained(DEFAULT_MODEL)
    end = tok.token_to_id("<|im_end|>")
    chain = [prompt[-1]] + distinct_spelling(tok, reply, {prompt[-1], end, tok.token_to_id("<|im_start|>"), 0}) + [end]
    successor_lm(chain, tok.vocab_size).save_pretrained(path)
    for name in TOKENIZER_FILES:
        shutil.copy(DEFAULT_MODEL / name, path / name)
    return path


@pytest.fixture(scope="module")
def default_server():
    # context shift: no length limit, so a reply to be stopped runs until it is (however fast the machine)
    app = create_app(mpt_lite.load(), model_name="mpt-lite-default", num_blocks=512, max_num_seqs=4,
                     request_options={"context_shift": True})
    with server_thread(app) as url:
        yield url


@pytest.fixture(scope="module")
def spelling_model(tmp_path_factory):
    tok = MptTokenizer.from_pretrained(DEFAULT_MODEL)
    prompt = encode_chat(tok, [{"role": "user", "content": ASK}], add_generation_prompt=True)
    path = spelling_checkpoint(tmp_path_factory.mktemp("spelling"), prompt, TRICKY)
    model = mpt_lite.load(path, bits=None)
    # the oracle: the model itself, without the server or the page, spells TRICKY
    assert model.chat([{"role": "user", "content": ASK}], max_new_tokens=100) == TRICKY
    return path


@pytest.fixture(scope="module")
def spelling_server(spelling_model):
    app = create_app(mpt_lite.load(spelling_model, bits=None), model_name="spelling", num_blocks=64, max_num_seqs=4)
    with server_thread(app) as url:
        yield url


@pytest.fixture(scope="module")
def key_server(spelling_model):
    app = create_app(mpt_lite.load(spelling_model, bits=None), model_name="spelling", api_key=KEY,
                     num_blocks=64, max_num_seqs=4)
    with server_thread(app) as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    chromium, driver_path = browser_paths()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1100,900", "--no-first-run", "--disable-extensions"):
        opts.add_argument(arg)
    drv = webdriver.Chrome(service=Service(driver_path), options=opts)
    drv.set_page_load_timeout(20)
    try:
        yield drv
    finally:
        drv.quit()


def until(check, timeout: float = 15.0, what: str = "the condition"):
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


class Page:
    """The chat page in the browser, by the ids and classes chat.js uses."""

    def __init__(self, drv, url: str) -> None:
        from selenium.webdriver.common.by import By

        self.drv, self.By = drv, By
        drv.get(url + "/")
        drv.execute_script("sessionStorage.clear()")
        drv.get(url + "/")
        until(lambda: drv.execute_script("return document.readyState") == "complete", what="the page")

    def el(self, id_: str):
        return self.drv.find_element(self.By.ID, id_)

    def set_field(self, id_: str, value: str) -> None:
        field = self.el(id_)
        field.clear()
        if value:
            field.send_keys(value)

    def say(self, text: str, temperature: str = "0", max_tokens: str = "64", system: str = "") -> None:
        self.set_field("system", system)
        self.set_field("temperature", temperature)
        self.set_field("max-tokens", max_tokens)
        self.set_field("input", text)
        self.el("send").click()

    def replies(self) -> list:
        return self.drv.find_elements(self.By.CSS_SELECTOR, "#messages .msg.assistant")

    def last_reply(self):
        return until(lambda: self.replies()[-1] if self.replies() else None, what="a reply bubble")

    def reply_text(self) -> str:
        return self.drv.execute_script(
            "const m = document.querySelectorAll('#messages .msg.assistant .content');"
            "return m.length ? m[m.length - 1].textContent : '';")

    def reply_state(self) -> str:
        return self.last_reply().get_attribute("data-state")

    def wait_done(self, timeout: float = 30.0):
        until(lambda: self.reply_state() in ("done", "stopped", "error"), timeout, "the reply to end")
        assert self.reply_state() == "done", self.last_reply().text
        return self.last_reply()


def health(url: str, **kw) -> dict:
    return httpx.get(url + "/health", timeout=10, **kw).json()


def wait_idle(url: str, **kw) -> dict:
    def idle():
        h = health(url, **kw)
        return h if h["running"] == 0 and h["waiting"] == 0 and h["kv_blocks_free"] == h["kv_blocks_total"] else None
    return until(idle, 10, "the server to go idle")


# ---- the page's files (no browser needed) ----

def test_page_files_served_and_key_exemption_is_narrow(key_server):
    with httpx.Client(base_url=key_server, timeout=10) as c:
        page = c.get("/")  # no key: the page is static and public
        assert c.head("/").status_code == 200 and c.head("/static/chat.js").status_code == 200
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert "script-src 'self'" in page.headers["content-security-policy"]
        assert '<script src="/static/chat.js"' in page.text and "http" not in page.text  # nothing from elsewhere
        for name, kind in (("chat.js", "text/javascript"), ("chat.css", "text/css")):
            r = c.get(f"/static/{name}")
            assert r.status_code == 200 and r.headers["content-type"].startswith(kind)
        assert "innerHTML" not in c.get("/static/chat.js").text
        # everything else still needs the key, also near the exempt paths
        for method, path in (("GET", "/health"), ("GET", "/v1/models"), ("POST", "/"), ("GET", "/static/x.js"),
                             ("GET", "/static/../health"), ("GET", "/static/chat.js/"), ("GET", "/index.html")):
            assert c.request(method, path).status_code == 401, (method, path)
        assert c.get("/v1/models", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
        assert c.get("/static/nope.js", headers={"Authorization": f"Bearer {KEY}"}).status_code == 404


def test_package_data_lists_the_static_files():
    text = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    assert re.search(r'mpt_lite = \[[^\]]*"server/static/\*"', text)
    for name in ("index.html", "chat.js", "chat.css"):
        assert (Path(mpt_lite.__file__).parent / "server" / "static" / name).is_file()


def test_missing_browser_skips_or_fails_when_required(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.delenv("MPT_LITE_REQUIRE_BROWSER", raising=False)
    with pytest.raises(pytest.skip.Exception, match="scripts/install_chromium.sh"):
        browser_paths()
    monkeypatch.setenv("MPT_LITE_REQUIRE_BROWSER", "1")
    with pytest.raises(pytest.fail.Exception, match="MPT_LITE_REQUIRE_BROWSER=1 but chromium"):
        browser_paths()


# ---- in the browser ----

def test_streamed_reply_conversation_and_new_chat(browser, default_server):
    page = Page(browser, default_server)
    until(lambda: page.el("model-name").text == "mpt-lite-default", what="the model name")
    # the browser itself records the reply's length at each change of the conversation's DOM
    page.drv.execute_script("""
        window.seen = [];
        new MutationObserver(() => {
          const m = document.querySelectorAll('#messages .msg.assistant .content');
          if (m.length) window.seen.push([performance.now(), m[m.length - 1].textContent.length]);
        }).observe(document.getElementById('messages'), {childList: true, subtree: true, characterData: true});""")
    # long enough to span several repaints (the page repaints a streaming reply every PAINT_MS): a request
    # that the default model answers at length, greedy (LONG_REQUEST)
    page.say(LONG_REQUEST, max_tokens="480")
    page.wait_done()
    seen = page.drv.execute_script("return window.seen")
    lengths = [n for _, n in seen]
    assert lengths == sorted(lengths), "the reply shrank while streaming"
    grew = sorted(set(n for n in lengths if n > 0))
    assert len(grew) >= 5, f"the reply did not appear piece by piece: lengths seen {lengths}"
    first = next(t for t, n in seen if n > 0)
    assert seen[-1][0] - first > 50, "the whole reply appeared at once"
    meta = page.last_reply().find_element(page.By.CSS_SELECTOR, ".meta").text
    m = re.fullmatch(r"(\d+) tokens · ([\d.]+) tokens/s · first token [\d.]+ s", meta)
    assert m and 1 <= int(m.group(1)) <= 480 and float(m.group(2)) > 0, meta
    assert page.el("send").is_enabled() and not page.el("stop").is_displayed()

    page.say("And another one.", max_tokens="8")  # the conversation goes on: 2 turns on screen
    page.wait_done()
    assert len(page.drv.find_elements(page.By.CSS_SELECTOR, "#messages .msg")) == 4
    page.el("new-chat").click()
    assert page.drv.find_elements(page.By.CSS_SELECTOR, "#messages .msg") == []
    wait_idle(default_server)


def test_stop_aborts_the_request_and_frees_its_blocks(browser, default_server):
    before = wait_idle(default_server)["counters"]
    page = Page(browser, default_server)
    page.say(ENDLESS_REQUEST, max_tokens="100000")
    until(lambda: len(page.reply_text()) > 20, what="the reply to start")
    h = health(default_server)
    assert h["running"] == 1 and h["kv_blocks_free"] < h["kv_blocks_total"]
    assert page.el("stop").is_displayed() and not page.el("send").is_enabled()
    page.el("stop").click()
    until(lambda: page.reply_state() == "stopped", 5, "the reply to stop")
    text = page.reply_text()
    time.sleep(0.5)
    assert page.reply_text() == text, "the reply kept growing after Stop"
    assert page.el("send").is_enabled() and not page.el("stop").is_displayed()
    after = wait_idle(default_server)["counters"]  # the engine runs nothing and every block is free
    assert after["aborted"] == before["aborted"] + 1 and after["completed"] == before["completed"]
    assert after["completion_tokens"] == before["completion_tokens"]  # aborted, not run to its end


def check_rendered_literally(page) -> None:
    text = page.reply_text()
    assert TRICKY_PROSE in text, text
    assert page.drv.find_elements(page.By.CSS_SELECTOR, "#messages script, #messages img, #messages [onerror]") == []
    assert page.drv.execute_script("return document.scripts.length") == 1  # chat.js alone
    assert page.drv.execute_script("return document.images.length") == 0
    codes = page.drv.find_elements(page.By.CSS_SELECTOR, "#messages .msg.assistant pre > code")
    assert [c.get_attribute("textContent") for c in codes][-1:] == ["  y = 2"]
    assert codes[-1].get_attribute("data-lang") == "py"
    assert text == TRICKY_PROSE + "\n" + "  y = 2"  # the fences became the <pre>, the rest is text


def test_model_output_is_shown_as_text(browser, spelling_server):
    page = Page(browser, spelling_server)
    page.say(ASK, max_tokens="5000")  # more than the context: the server's 400 is shown as it is
    until(lambda: page.reply_state() == "error", what="the error")
    assert "HTTP 400: this model's maximum context length is 1024 tokens" in page.last_reply().text
    assert page.el("send").is_enabled()
    page.say(ASK, temperature="1")
    page.wait_done()
    check_rendered_literally(page)
    from selenium.common.exceptions import NoAlertPresentException
    with pytest.raises(NoAlertPresentException):
        page.drv.switch_to.alert.text


def test_api_key_flow(browser, key_server):
    page = Page(browser, key_server)
    form = until(lambda: page.el("key-form").is_displayed() and page.el("key-form"), what="the key form")
    assert "needs an API key" in page.el("status").text
    page.set_field("api-key", "wrong")
    page.el("key-submit").click()
    until(lambda: "refused" in page.el("status").text and form.is_displayed(), what="the refusal")
    assert "invalid API key" in page.el("status").text
    page.set_field("api-key", KEY)
    page.el("key-submit").click()
    until(lambda: page.el("model-name").text == "spelling", what="the model list with the key")
    assert not form.is_displayed() and page.el("status").text == ""
    assert page.drv.execute_script("return sessionStorage.getItem('mpt-lite-api-key')") == KEY
    page.say(ASK)
    page.wait_done()
    check_rendered_literally(page)

    # the key goes bad mid-session: the message is refused, the page asks again and then sends it
    page.el("new-chat").click()
    page.drv.execute_script("sessionStorage.setItem('mpt-lite-api-key', 'stale')")
    page.say(ASK)
    until(lambda: form.is_displayed(), what="the key form after a 401")
    assert "refused" in page.el("status").text and page.replies() == []
    assert page.el("input").get_attribute("value") == ""
    page.set_field("api-key", KEY)
    page.el("key-submit").click()
    page.wait_done()
    check_rendered_literally(page)
    assert len(page.drv.find_elements(page.By.CSS_SELECTOR, "#messages .msg.user")) == 1
