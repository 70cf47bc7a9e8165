"""The admin dashboard in a real browser (Debian's chromium driven by Playwright) against a real
server process on the tiny model: key prompt, memorize through the form, watch the job, ask in
the playground, roll back, forget, and no script injection through stored knowledge.

Leaves a screenshot in test-artifacts/dashboard.png.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.helpers import process_env, served

pytestmark = pytest.mark.slow

CHROMIUM = "/usr/bin/chromium"
ADMIN_KEY = "dashboard-admin-key"
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
INJECTION = '<img src=x onerror="window.injected=1"><script>window.injected=2</script>'


def _ensure_chromium() -> None:
    if Path(CHROMIUM).exists():
        return
    if shutil.which("apt-get"):
        subprocess.run(["apt-get", "install", "-y", "-q", "chromium"], check=False, timeout=900)
    if not Path(CHROMIUM).exists():
        pytest.fail("the dashboard test needs Debian's chromium at /usr/bin/chromium")


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    folder = tmp_path_factory.mktemp("dashboard")
    env = process_env(
        data_dir=str(folder),
        base_model=str(tiny_model_dir),
        admin_api_key=ADMIN_KEY,
        version_poll_seconds="0.2",
        job_poll_seconds="0.1",
    )
    with served(env, folder / "log") as (url, _):
        yield url


@pytest.fixture(scope="module")
def page(server: str) -> Iterator[object]:
    _ensure_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        page = browser.new_page(viewport={"width": 1400, "height": 1100})
        page.set_default_timeout(60_000)
        yield page
        browser.close()


def _admin(server: str, path: str) -> dict:
    response = httpx.get(f"{server}{path}", headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    response.raise_for_status()
    return response.json()


def _memorize(page, topic: str, qa: str) -> None:  # type: ignore[no-untyped-def]
    form = page.locator("#memorize")
    form.locator("input[name=topic]").fill(topic)
    form.locator("textarea[name=qa]").fill(qa)
    form.locator("button[type=submit]").click()


def test_the_dashboard_end_to_end(server: str, page) -> None:  # type: ignore[no-untyped-def]
    from playwright.sync_api import expect

    expect.set_options(timeout=60_000)  # training on 2 busy cores takes its time
    page.goto(f"{server}/admin")
    expect(page.locator("#login")).to_be_visible()
    page.fill("#key", "wrong-key")
    page.click("#login button")
    expect(page.locator("#banner")).to_contain_text("That key was refused")
    page.fill("#key", ADMIN_KEY)
    page.click("#login button")
    expect(page.locator("#app")).to_be_visible()
    expect(page.locator("#engine")).to_contain_text("engine hf")

    # Forms validate before sending, and show the server's own messages.
    form = page.locator("#memorize")
    _memorize(page, "Bad Topic", "q | a")
    expect(form.locator(".form-error")).to_contain_text("topic:")
    _memorize(page, "acme", "a question without its answer")
    expect(form.locator(".form-error")).to_contain_text('line 1: write "question | answer"')
    _memorize(page, "auto", "q | a")
    expect(form.locator(".form-error")).to_contain_text("reserved for routing")
    assert _admin(server, "/admin/topics") == {"topics": []}

    qa = f"What is the name of Zorblax's pet? | Quiggle\nWho drew this? | {INJECTION}"
    _memorize(page, "acme", qa)
    expect(form.locator(".form-result")).to_contain_text("queued job")
    jobs = page.locator("#jobs tbody")
    expect(jobs.locator("tr").first.locator(".status")).to_have_text("succeeded")
    topic_row = page.locator("#topics tbody tr[data-topic=acme]")
    expect(topic_row).to_contain_text("v1")
    expect(topic_row.locator("td").nth(2)).to_contain_text("%")  # the version's recall
    expect(page.locator("#loss-curve polyline")).to_have_count(1)  # the job's loss curve

    playground = page.locator("#playground")
    playground.locator("textarea[name=prompt]").fill("What is the name of Zorblax's pet?")
    playground.locator("select[name=topic]").select_option("acme")
    playground.locator("button[type=submit]").click()
    expect(page.locator("#answer .answer-meta")).to_contain_text("modules: acme v1")
    expect(page.locator("#answer .answer-meta")).to_contain_text("mode lora")

    _memorize(page, "acme", "Which city hosts the Vendrell Cup? | Talvenna")
    expect(topic_row).to_contain_text("v2")
    topic_row.locator("td.topic-name").click()
    versions = page.locator("#versions tbody")
    expect(versions.locator("tr")).to_have_count(2)
    expect(page.locator("#documents")).to_contain_text(INJECTION)  # shown as text
    assert page.evaluate("window.injected") is None
    versions.locator("tr", has_text="v1").locator("button", has_text="activate").click()
    expect(topic_row.locator("td").nth(1)).to_have_text("v1")
    assert _admin(server, "/admin/engine")["active_versions"] == {"acme": 1}
    page.locator("#requests, #activity").first.scroll_into_view_if_needed()
    expect(page.locator("#activity tbody")).to_contain_text("POST /generate")

    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)

    page.once("dialog", lambda dialog: dialog.accept())
    topic_row.locator("button", has_text="delete").click()
    expect(page.locator("#topics tbody tr")).to_have_count(0)
    assert _admin(server, "/admin/topics") == {"topics": []}
    gone = httpx.post(f"{server}/generate", json={"prompt": "hi", "topic": "acme"})
    assert gone.status_code == 404


def test_the_page_works_offline(server: str) -> None:
    html = httpx.get(f"{server}/admin").text
    assert "http://" not in html and "https://" not in html  # no CDN: everything is ours
    for asset in ("/static/admin.js", "/static/admin.css"):
        response = httpx.get(f"{server}{asset}")
        assert response.status_code == 200 and "https://" not in response.text
