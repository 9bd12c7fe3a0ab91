"""The admin dashboard in a real browser: Debian's headless Chromium, driven by Playwright,
against `tailor serve` with its fine-tune worker.

Each test saves screenshots under test-output/dashboard/ (the README shows one).
"""

from __future__ import annotations

import re
import secrets
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from adapters.base_shapes import BaseModelShapes
from adapters.peft_interop import ADAPTER_CONFIG, ADAPTER_WEIGHTS, export_peft_dir
from tests.adapter_factory import random_lora
from tests.adapter_upload import upload_and_promote
from tests.finetune_fixtures import MODEL, pirate_conversations
from tests.server import (
    CPU_WORKER_SETTINGS,
    REPO_ROOT,
    RunningServer,
    prepared_model_store,
    running_server,
    served_env,
)

# Chromium drives the dashboard of a `tailor serve` process.
pytestmark = [pytest.mark.browser, pytest.mark.e2e]

CHROMIUM = Path("/usr/bin/chromium")
# Without the networking flags Chromium keeps calling Google's hosts, which this
# closed network refuses; --no-sandbox because the tests may run as root.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = REPO_ROOT / "test-output" / "dashboard"
SAMPLE_SECONDS = 2
# How many points the overview page keeps (MAX_POINTS in pages/overview.js).
OVERVIEW_POINTS = 360
ADMIN_KEY = "admin-" + secrets.token_hex(8)
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    env = served_env(
        tmp_path_factory.mktemp("data"),
        ADMIN_KEY,
        # The overview page draws its last 360 points: at one every 2 s, 12 minutes of
        # this module before the overview test, time for the job test on a busy machine.
        TAILOR_DASHBOARD_SAMPLE_SECONDS=str(SAMPLE_SECONDS),
        TAILOR_FINETUNE_BATCH_SIZE="2",
        **CPU_WORKER_SETTINGS,
    )
    with running_server(env, timeout=120) as running:
        yield running


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: `make test` installs Debian's chromium package")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Browser, server: RunningServer) -> Iterator[Page]:
    """A signed-in page: a fresh browser context (cookie jar) per test."""
    context = browser.new_context(base_url=server.url, viewport={"width": 1400, "height": 1000})
    context.set_default_timeout(20_000)
    signed_in = context.new_page()
    sign_in(signed_in, ADMIN_KEY)
    expect(signed_in).to_have_url(re.compile(r"/admin/$"))
    yield signed_in
    context.close()


def sign_in(page: Page, key: str) -> None:
    page.goto("/admin/login")
    page.fill("input[name=key]", key)
    page.click("button[type=submit]")


def screenshot(page: Page, name: str) -> None:
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def chart_points(page: Page, testid: str) -> int:
    points = page.get_by_test_id(testid).locator("svg").get_attribute("data-points")
    return int(points or 0)


def series_points(page: Page, testid: str, series: str) -> int:
    """How many values one named series of a chart has drawn (0 when it is not drawn)."""
    group = page.get_by_test_id(testid).locator(f'svg g[data-series="{series}"]')
    return int(group.get_attribute("data-points") or 0) if group.count() else 0


# The page, and each table's scrolling box, whose content is wider than the box.
TOO_WIDE = """() => [document.documentElement, ...document.querySelectorAll('.table-wrap')]
    .filter((el) => el.scrollWidth > el.clientWidth + 1)
    .map((el) => `${el.className || el.tagName}: ${el.scrollWidth} > ${el.clientWidth}`)"""


def check_layout(page: Page, name: str) -> None:
    """At the widths admins use, nothing sticks out of the page or out of a table's
    box (a table that needs a scroll bar at these widths is too wide); screenshots."""
    for width in (1280, 1920):
        page.set_viewport_size({"width": width, "height": 1000})
        page.wait_for_timeout(300)  # charts redraw at their new width
        screenshot(page, f"{name}-{width}")
        too_wide = page.evaluate(TOO_WIDE)
        assert too_wide == [], f"{name} at {width} px: {too_wide}"


def wait_for(predicate: Any, *, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.5)


def new_user(server: RunningServer, name: str) -> dict[str, Any]:
    created: dict[str, Any] = httpx.post(
        f"{server.url}/admin/users", json={"name": name}, headers=ADMIN
    ).json()
    return created


def chat(server: RunningServer, key: str, text: str) -> str:
    """Asks ``auto``; returns the response id."""
    answer = httpx.post(
        f"{server.url}/v1/chat/completions",
        json={"model": "auto", "messages": [{"role": "user", "content": text}], "max_tokens": 4},
        headers={"Authorization": f"Bearer {key}"},
        timeout=60,
    )
    assert answer.status_code == 200, answer.text
    response_id: str = answer.json()["id"]
    return response_id


def peft_files(folder: Path, *, seed: int) -> list[Path]:
    shapes = BaseModelShapes.from_model_dir(prepared_model_store() / MODEL)
    lora = random_lora(shapes, base_model_id=MODEL, rank=8, scale=0.08, seed=seed)
    export_peft_dir(lora, folder)
    return [folder / ADAPTER_CONFIG, folder / ADAPTER_WEIGHTS]


def test_sign_in_refuses_bad_keys_and_user_keys(browser: Browser, server: RunningServer) -> None:
    context = browser.new_context(base_url=server.url)
    page = context.new_page()
    page.goto("/admin/jobs")
    expect(page).to_have_url(re.compile(r"/admin/login\?next="))
    sign_in(page, "not-the-key")
    expect(page.get_by_role("alert")).to_contain_text("not valid")
    user_key = new_user(server, "not-an-admin")["api_key"]
    sign_in(page, user_key)
    expect(page.get_by_role("alert")).to_contain_text("not an admin key")
    screenshot(page, "login")
    # The session cookie is out of the page's reach.
    sign_in(page, ADMIN_KEY)
    expect(page).to_have_url(re.compile(r"/admin/$"))
    assert page.evaluate("document.cookie") == ""
    cookie = next(c for c in context.cookies() if c["name"] == "tailor_admin_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    page.get_by_role("button", name="Sign out").click()
    expect(page).to_have_url(re.compile(r"/admin/login"))
    page.goto("/admin/users")
    expect(page).to_have_url(re.compile(r"/admin/login\?next="))
    context.close()


def test_create_user_shows_the_key_once_and_revokes_it(page: Page, server: RunningServer) -> None:
    page.goto("/admin/users")
    form = page.get_by_test_id("create-user-form")
    form.locator("input[name=name]").fill("dana")
    form.locator("button[type=submit]").click()
    new_key = page.get_by_test_id("new-key")
    expect(new_key).to_contain_text("tlr_")
    key = re.search(r"tlr_[A-Za-z0-9_-]+", new_key.inner_text())
    assert key is not None
    secret = key.group(0)
    me = {"Authorization": f"Bearer {secret}"}
    assert httpx.get(f"{server.url}/v1/models", headers=me).status_code == 200
    screenshot(page, "users-new-key")

    # Gone for good once the page changes: neither in the page nor in what it reads.
    page.reload()
    expect(page.get_by_test_id("create-user-form")).to_be_visible()
    assert secret not in page.content()
    assert secret[:12] not in page.content()

    [user] = [
        u
        for u in httpx.get(f"{server.url}/admin/users", headers=ADMIN).json()["data"]
        if u["name"] == "dana"
    ]
    page.get_by_test_id(f"user-{user['id']}").click()
    detail = page.get_by_test_id("user-detail")
    expect(detail).to_contain_text(user["keys"][0]["id"])
    assert user["keys"][0]["prefix"] not in page.content()
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_test_id(f"revoke-{user['keys'][0]['id']}").click()
    wait_for(
        lambda: httpx.get(f"{server.url}/v1/models", headers=me).status_code == 401,
        timeout=10,
        what="the revoked key to be refused",
    )
    screenshot(page, "users")


def test_upload_shows_errors_then_lists_promotes_and_rolls_back(
    page: Page, server: RunningServer, tmp_path: Path
) -> None:
    user = new_user(server, "erin")
    page.goto("/admin/adapters")
    form = page.get_by_test_id("upload-form")
    expect(form.locator("select[name=user_id] option", has_text="erin")).to_have_count(1)
    form.locator("select[name=user_id]").select_option(user["id"])
    form.locator("select[name=base_model]").select_option(MODEL)

    # A bad upload: the weights are missing, and the page says so.
    first = peft_files(tmp_path / "v1", seed=1)
    form.locator("input[type=file]").set_input_files([str(first[0])])
    form.locator("button[type=submit]").click()
    expect(page.get_by_test_id("upload-error")).to_contain_text("adapter_model.safetensors")
    # A pickle is refused unopened.
    pickle = tmp_path / "adapter_model.bin"
    pickle.write_bytes(b"not opened")
    form.locator("input[type=file]").set_input_files([str(first[0]), str(pickle)])
    form.locator("button[type=submit]").click()
    expect(page.get_by_test_id("upload-error")).to_contain_text("pickle")
    screenshot(page, "adapters-upload-error")

    form.locator("input[type=file]").set_input_files([str(p) for p in first])
    form.locator("button[type=submit]").click()
    expert = wait_for_expert(server, user["id"], versions=1)
    v1 = expert["versions"][0]["id"]
    expect(page.get_by_test_id(f"expert-{expert['id']}")).to_be_visible()
    expect(page.get_by_test_id(f"state-{v1}")).to_have_text("candidate")

    page.get_by_test_id(f"promote-{v1}").click()
    expect(page.get_by_test_id(f"state-{v1}")).to_have_text("active")
    # Who decided: the admin; an upload has no evaluation, so no gate was overridden.
    expect(page.get_by_test_id(f"promoted-{v1}")).to_contain_text("promoted by admin")
    expect(page.get_by_test_id(f"override-{v1}")).to_have_count(0)

    second = peft_files(tmp_path / "v2", seed=2)
    form.locator("input[type=file]").set_input_files([str(p) for p in second])
    form.locator("button[type=submit]").click()
    expert = wait_for_expert(server, user["id"], versions=2)
    v2 = next(v["id"] for v in expert["versions"] if v["id"] != v1)
    page.get_by_test_id(f"promote-{v2}").click()
    expect(page.get_by_test_id(f"state-{v2}")).to_have_text("active")
    expect(page.get_by_test_id(f"state-{v1}")).not_to_have_text("active")

    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_test_id(f"rollback-{expert['id']}").click()
    expect(page.get_by_test_id(f"state-{v1}")).to_have_text("active")
    expect(page.get_by_test_id(f"state-{v2}")).to_have_text("retired")
    expect(page.get_by_test_id(f"retired-{v2}")).to_contain_text("retired by admin")
    served = httpx.get(f"{server.url}/admin/adapters", headers=ADMIN).json()["data"]
    assert next(a for a in served if a["id"] == expert["id"])["active_version_id"] == v1

    # Download: the browser's session fetches the PEFT files back.
    with page.expect_download() as started:
        page.get_by_test_id(f"download-{v1}").click()
    archive = zipfile.ZipFile(started.value.path())
    assert set(archive.namelist()) >= {ADAPTER_CONFIG, ADAPTER_WEIGHTS}
    screenshot(page, "adapters")


def wait_for_expert(server: RunningServer, user_id: str, *, versions: int) -> dict[str, Any]:
    found: dict[str, Any] = {}

    def listed() -> bool:
        experts = httpx.get(
            f"{server.url}/admin/adapters", params={"user_id": user_id}, headers=ADMIN
        ).json()["data"]
        if experts and len(experts[0]["versions"]) >= versions:
            found.update(experts[0])
            return True
        return False

    wait_for(listed, timeout=30, what=f"{versions} uploaded version(s)")
    return found


def test_a_started_job_draws_its_loss_curve_live_and_can_be_cancelled(
    page: Page, server: RunningServer
) -> None:
    user = new_user(server, "pirate")
    stored = httpx.post(
        f"{server.url}/v1/examples",
        json={"examples": [{"messages": m} for m in pirate_conversations(16)]},
        headers={"Authorization": f"Bearer {user['api_key']}"},
    )
    assert stored.status_code == 201, stored.text
    # No rise of the generic-text NLL allowed for this user: the pirate voice raises it,
    # so the gate holds the candidate back, and the admin overrides it further down.
    limit = httpx.patch(
        f"{server.url}/admin/users/{user['id']}/fine-tuning",
        json={"max_generic_rise": 0},
        headers=ADMIN,
    )
    assert limit.status_code == 200, limit.text

    page.goto("/admin/jobs")
    form = page.get_by_test_id("start-job-form")
    form.locator("select[name=model]").select_option(MODEL)
    form.locator("select[name=user_id]").select_option(user["id"])
    form.locator("input[name=epochs]").fill("4")
    form.locator("button[type=submit]").click()
    wait_for(
        lambda: bool(
            httpx.get(
                f"{server.url}/admin/jobs", params={"user_id": user["id"]}, headers=ADMIN
            ).json()["data"]
        ),
        timeout=10,
        what="the job to be queued",
    )
    [job] = httpx.get(
        f"{server.url}/admin/jobs", params={"user_id": user["id"]}, headers=ADMIN
    ).json()["data"]
    page.get_by_test_id(f"job-{job['id']}").click()
    detail = page.get_by_test_id("job-detail")
    expect(detail).to_be_visible()

    wait_for(
        lambda: chart_points(page, "loss-curve") >= 2,
        timeout=240,
        what="the first loss points",
    )
    first = chart_points(page, "loss-curve")
    wait_for(
        lambda: chart_points(page, "loss-curve") > first,
        timeout=120,
        what="the loss curve to move",
    )
    expect(page.get_by_test_id("job-tokens-per-second")).to_contain_text(re.compile(r"\d"))
    expect(page.get_by_test_id("job-eta")).to_contain_text(re.compile(r"\d"))
    screenshot(page, "jobs")

    page.get_by_test_id("cancel-job").click()
    wait_for(lambda: job_status(server, job["id"]) == "cancelled", timeout=60, what="the cancel")
    expect(page.get_by_test_id("job-status")).to_have_text("cancelled")

    # Retried, it trains again to the end: the evaluation lands on the Adapters page.
    page.get_by_test_id("retry-job").click()
    expect(page.get_by_test_id("job-status")).not_to_have_text("cancelled")
    wait_for(
        lambda: job_status(server, job["id"]) in ("succeeded", "failed"),
        timeout=600,
        what="the retried job to finish",
    )
    assert job_status(server, job["id"]) == "succeeded"
    expect(page.get_by_test_id("job-status")).to_have_text("succeeded")
    finished = httpx.get(f"{server.url}/admin/jobs/{job['id']}", headers=ADMIN).json()
    assert finished["outcome"] == "held_back", f"the gate was to hold it back: {finished}"

    # The verdict heads the panel, with the gate's reason.
    verdict = page.get_by_test_id("job-verdict")
    expect(verdict).to_contain_text("Held back:")
    expect(verdict).to_contain_text("generic text NLL rose")
    # The validation loss is a second series beside the training loss, in the legend too.
    curve = page.get_by_test_id("loss-curve").locator("svg")
    expect(curve.locator("text.chart-legend")).to_have_text(["training loss", "validation loss"])
    assert series_points(page, "loss-curve", "validation loss") >= 1
    assert series_points(page, "loss-curve", "training loss") > series_points(
        page, "loss-curve", "validation loss"
    ), "validation is checked at some steps only"
    expect(page.get_by_test_id("job-validation-loss")).to_contain_text(re.compile(r"\d"))
    # One loss figure: the newest step's, named by its step, and the same in the events.
    step = page.get_by_test_id("job-step").inner_text().split(" / ")[0]
    expect(page.get_by_test_id("job-loss-label")).to_have_text(f"training loss, step {step}")
    loss = page.get_by_test_id("job-loss").inner_text()
    expect(page.get_by_test_id("job-events")).to_contain_text(f"step {step}/{step} · epoch")
    expect(page.get_by_test_id("job-events")).to_contain_text(f"training loss {loss}")
    expect(page.get_by_test_id("job-events")).to_contain_text("mean of the last epoch")
    check_layout(page, "jobs-finished")
    page.set_viewport_size({"width": 1400, "height": 1000})

    page.goto(f"/admin/adapters?user_id={user['id']}")
    version_id = finished["result_version_id"]
    version = page.get_by_test_id(f"version-{version_id}")
    for variant in ("base", "candidate"):
        expect(version).to_contain_text(variant)
    expect(version.get_by_test_id("eval-verdict")).to_contain_text("held back")
    expect(version.get_by_test_id("eval-verdict")).to_contain_text("generic text NLL rose")
    # The sample answers fold under the row; unfolded: the questions, base's and the
    # candidate's answers side by side (no "current": the user had no experts before).
    samples = page.get_by_test_id(f"samples-{version_id}")
    answers = samples.get_by_test_id("sample-answers")
    expect(answers).to_be_hidden()
    samples.locator("summary").click()
    expect(answers).to_be_visible()
    expect(answers.locator("th")).to_have_text(["question", "base", "candidate"])
    expect(answers.locator("tbody tr")).to_have_count(3)
    expect(answers.locator("tbody tr").first).to_contain_text("Tell me about")
    expect(answers.locator("td.sample-candidate").first).not_to_be_empty()
    check_layout(page, "adapters-evaluated")

    # Promoting it by hand overrides the gate: asked first, then it says so.
    expect(page.get_by_test_id(f"override-{version_id}")).to_have_count(0)
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_test_id(f"promote-{version_id}").click()
    expect(page.get_by_test_id(f"state-{version_id}")).to_have_text("active")
    expect(page.get_by_test_id(f"promoted-{version_id}")).to_contain_text("promoted by admin")
    expect(page.get_by_test_id(f"override-{version_id}")).to_have_text("overrode the gate")
    screenshot(page, "adapters-overridden")


def job_status(server: RunningServer, job_id: str) -> str:
    answer = httpx.get(f"{server.url}/admin/jobs/{job_id}", headers=ADMIN, timeout=30)
    status: str = answer.json()["status"]
    return status


def test_router_page_explains_recent_decisions(page: Page, server: RunningServer) -> None:
    user = new_user(server, "router-traffic")
    response_id = chat(server, user["api_key"], "Write a haiku about tea.")
    rated = httpx.post(
        f"{server.url}/v1/feedback",
        json={"response_id": response_id, "rating": 1},
        headers={"Authorization": f"Bearer {user['api_key']}"},
    )
    assert rated.status_code == 201, rated.text
    page.goto("/admin/router")
    expect(page.get_by_test_id("chart-ratings").locator("svg")).to_be_visible()
    decisions = page.get_by_test_id("recent-decisions")
    expect(decisions).to_contain_text(user["id"])
    expect(page.get_by_test_id("decision-latency")).to_contain_text(re.compile(r"\d"))
    # The rated answer is a point of the reliability diagram.
    calibration = page.get_by_test_id("chart-calibration").locator("svg")
    expect(calibration).to_have_attribute("data-points", re.compile(r"^[1-9]"))
    expect(page.get_by_test_id("calibration-scores")).to_contain_text("live")
    screenshot(page, "router")

    # Resetting the user's influence asks first, then says what is ignored now.
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_test_id(f"reset-routing-{user['id']}").click()
    expect(page.locator("#notice")).to_contain_text("now ignores router-traffic's feedback")


def test_the_api_docs_render_with_the_network_off(browser: Browser, server: RunningServer) -> None:
    context = browser.new_context(base_url=server.url, viewport={"width": 1400, "height": 1000})
    context.set_default_timeout(20_000)
    elsewhere: list[str] = []

    def only_this_server(route: Any) -> None:
        if route.request.url.startswith(server.url):
            route.continue_()
        else:  # as a machine without internet would: nothing else answers
            elsewhere.append(route.request.url)
            route.abort()

    context.route("**/*", only_this_server)
    page = context.new_page()
    try:
        page.goto("/docs")
        expect(page.locator(".swagger-ui .info .title")).to_contain_text("Tailor")
        expect(
            page.locator(".swagger-ui").get_by_text("/v1/chat/completions").first
        ).to_be_visible()
        screenshot(page, "api-docs-swagger")
        page.goto("/redoc")
        expect(page.get_by_role("heading", name=re.compile("^Tailor"))).to_be_visible()
        expect(page.get_by_text("/v1/chat/completions").first).to_be_attached()
        screenshot(page, "api-docs-redoc")
        # Only ReDoc's script itself reaches out, for its "powered by" logo,
        # which then shows as a missing image: the docs do not need it.
        assert [url for url in elsewhere if "cdn.redoc.ly" not in url] == []
    finally:
        context.close()


def test_overview_charts_update_live(page: Page, server: RunningServer, tmp_path: Path) -> None:
    # Last in the module, so that the jobs and adapters above show in its charts.
    user = new_user(server, "overview-traffic")
    upload_and_promote(
        server.url, ADMIN, user_id=user["id"], base_model=MODEL, folder=tmp_path / "peft"
    )
    for chart in ("requests", "latency", "routing", "cost", "cache", "queue", "jobs"):
        expect(page.get_by_test_id(f"chart-{chart}").locator("svg")).to_be_visible()
    before = chart_points(page, "chart-requests")
    # A full page only shifts its points: the count below could never grow.
    assert before <= OVERVIEW_POINTS - 4, (
        f"the server is {before * SAMPLE_SECONDS} s old: the overview page already holds "
        f"its {OVERVIEW_POINTS} points"
    )
    questions = ["Hello there", "What is two plus two?", "Name a colour.", "Say hi."] * 2
    for text in questions:
        chat(server, user["api_key"], text)
        time.sleep(0.5)
    wait_for(
        lambda: chart_points(page, "chart-requests") >= before + 4,
        timeout=30,
        what="the requests chart to gain points",
    )
    # The chats used the user's expert: the cache hit rate has points now.
    points = httpx.get(f"{server.url}/admin/overview", headers=ADMIN).json()["points"]
    assert any(p["cache_hit_rate"] is not None for p in points)
    assert sum(p["jobs"].get("cancelled", 0) + p["jobs"].get("succeeded", 0) for p in points[-1:])
    screenshot(page, "overview")
