"""The dashboard in a real browser: signing in, every page showing seeded traffic, filters carried
across pages, drilling down from a chart to the requests behind it, and no console errors.

Chromium is Debian's (`/usr/bin/chromium`) driven by Playwright; one browser serves the module.
Set `MLINE_SCREENSHOTS=<dir>` to keep a full-page screenshot of every page.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from playwright.sync_api import Browser, BrowserContext, Locator, Page, expect, sync_playwright

from tests.conftest import MASTER_KEY, GatewayService, Service, run_cli, start_gateway

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
HOSTILE = '<img src=x onerror="window.pwned=1">'
PAGES = {
    "/": ["search", "alice", "gpt-4o-mini", "discovery"],
    "/features": ["search", "summarize", HOSTILE],
    "/users": ["alice", "bob"],
    "/models": ["gpt-4o-mini", "claude-haiku-4-5"],
    "/cache": ["search"],
    "/errors": ["rate_limit"],
    "/agents": ["run-7"],
    "/requests": ["gpt-4o", "alice"],
    "/pricing": ["gpt-4o-mini", "llama-local", "discount 15%"],
}
"""Each page and names from the seeded traffic it must show."""

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"needs Chromium at {CHROMIUM}")


def seed_traffic(gateway: GatewayService) -> None:
    """Attributed calls of several features, users and models, a stream, a rate-limit error and a 3-step agent run."""

    def call(path: str, body: dict, status: int = 200, **headers: str) -> None:
        reply = httpx.post(gateway.url + path, json=body, headers=gateway.headers(**headers), timeout=30)
        assert reply.status_code == status, reply.text

    def chat(model: str, feature: str, user: str, status: int = 200, **headers: str) -> None:
        body = {"model": model, "messages": [{"role": "user", "content": f"{feature} for {user}"}]}
        attribution = {"x-meterline-feature": feature, "x-meterline-user": user, "x-meterline-team": "discovery"}
        call("/v1/chat/completions", body, status, **attribution, **headers)

    for _ in range(3):
        chat("gpt-4o-mini", "search", "alice", **{"x-mock-cached-tokens": "4"})
    chat("gpt-4o", "summarize", "bob", **{"x-mock-output-tokens": "200"})
    chat("gpt-4o-mini", "search", "bob", 429, **{"x-mock-fault": "rate_limit"})
    chat("llama-local", "search", "erin")
    chat("gpt-4o-mini", HOSTILE, "mallory")
    message = {"model": "claude-haiku-4-5", "max_tokens": 20, "messages": [{"role": "user", "content": "hi"}]}
    call("/v1/messages", message, **{"x-meterline-feature": "support", "x-meterline-user": "carol"})
    for step in (1, 2, 3):
        chat("gpt-4o-mini", "agent", "dave", **{"x-meterline-agent-run": "run-7", "x-meterline-agent-step": str(step)})
    stream = {
        "model": "gpt-4o-mini",
        "stream": True,
        "stream_options": {"include_usage": True},
        "messages": [{"role": "user", "content": "stream please"}],
    }
    headers = gateway.headers(**{"x-meterline-feature": "chat", "x-meterline-user": "alice"})
    with httpx.stream("POST", gateway.url + "/v1/chat/completions", json=stream, headers=headers, timeout=30) as reply:
        assert reply.status_code == 200
        reply.read()
    assert len(gateway.events(expected=12)) == 12


@pytest.fixture(scope="module")
def seeded(make_gateway, tmp_path_factory: pytest.TempPathFactory) -> GatewayService:  # type: ignore[no-untyped-def]
    """A gateway with a (future) negotiated discount in its price overrides, and the seeded traffic."""
    overrides = tmp_path_factory.mktemp("prices") / "prices.yaml"
    discount = "{provider: openai, models: [gpt-4o], percent: 15, effective_from: 2099-01-01}"
    overrides.write_text(f"discounts:\n  - {discount}\n")
    gateway = make_gateway(pricing=f"pricing: {{overrides: {overrides}}}")
    seed_traffic(gateway)
    return gateway


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def signed_in(browser: Browser, seeded: GatewayService) -> Iterator[BrowserContext]:
    """A browser context holding a session: signed in once through the form."""
    context = browser.new_context(base_url=seeded.url, viewport={"width": 1400, "height": 900})
    page = context.new_page()
    page.goto("/login")
    page.fill("input[name=key]", MASTER_KEY)
    page.click("button[type=submit]")
    page.wait_for_url(seeded.url + "/")
    page.close()
    yield context
    context.close()


def watch(page: Page, origin: str) -> list[str]:
    """Problems seen on `page` from now on: console errors, uncaught exceptions, dialogs, requests leaving `origin`."""
    problems: list[str] = []
    page.on("console", lambda message: message.type == "error" and problems.append(f"console: {message.text}"))
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    page.on("dialog", lambda dialog: (problems.append(f"dialog: {dialog.message}"), dialog.dismiss()))
    page.on("request", lambda request: request.url.startswith(origin) or problems.append(f"request: {request.url}"))
    return problems


@pytest.fixture
def page(signed_in: BrowserContext, seeded: GatewayService) -> Iterator[Page]:
    """A signed-in page; the test fails if the page logged an error, raised, opened a dialog or left the origin."""
    page = signed_in.new_page()
    problems = watch(page, seeded.url)
    yield page
    page.close()
    assert problems == []


def settled(page: Page) -> None:
    """Wait until every card of the page has been filled from the API, and check none shows an error."""
    expect(page.locator("[aria-busy]")).to_have_count(0)
    expect(page.locator(".card .error")).to_have_count(0)


def open_page(page: Page, path: str) -> None:
    page.goto(path)
    settled(page)


def query(page: Page) -> dict[str, list[str]]:
    return parse_qs(urlsplit(page.url).query)


def column(page: Page, card: str, label: str, table: int = 0) -> list[str]:
    """The texts of one column of a table (the first, or the `table`-th) in the card `#card`."""
    found = page.locator(f"#{card} table").nth(table)
    index = found.locator("thead th").all_inner_texts().index(label) + 1
    return found.locator(f"tbody tr td:nth-child({index})").all_inner_texts()


def dollars(text: str) -> float:
    """The amount a dashboard shows as money, e.g. "$1,234.50"."""
    return float(text.replace("$", "").replace(",", ""))


def click_middle(page: Page, shape: Locator) -> None:
    """Click the middle of a chart's shape with the mouse, as a person would (Plotly listens on a layer above it)."""
    shape.scroll_into_view_if_needed()
    box = shape.bounding_box()
    assert box is not None
    page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)


def click_bar(page: Page, card: str, name: str) -> None:
    """Click the horizontal bar labelled `name` in the chart of `#card`."""
    labels = page.locator(f"#{card} .ytick text").all_text_contents()
    click_middle(page, page.locator(f"#{card} .bars .point path").nth(labels.index(name)))


def test_sign_in_takes_the_admin_key(browser: Browser, seeded: GatewayService) -> None:
    context = browser.new_context(base_url=seeded.url)
    page = context.new_page()
    problems = watch(page, seeded.url)
    page.goto("/features?since=24h")
    assert urlsplit(page.url).path == "/login"
    page.fill("input[name=key]", "mlk-not-the-key")
    page.click("button[type=submit]")
    expect(page.locator(".error")).to_contain_text("not valid")
    page.fill("input[name=key]", MASTER_KEY)
    page.click("button[type=submit]")
    page.wait_for_url(seeded.url + "/features?since=24h")
    (cookie,) = context.cookies()
    assert (cookie["httpOnly"], cookie["sameSite"], cookie["path"]) == (True, "Strict", "/")
    page.click("button.signout")
    page.wait_for_url(re.compile(r"/login$"))
    page.goto("/")
    assert urlsplit(page.url).path == "/login"
    context.close()
    # the wrong key answered 401, which Chromium logs; nothing else may have gone wrong
    assert [problem for problem in problems if "401" not in problem] == []


def test_a_team_read_key_signs_in_and_sees_only_its_team(browser: Browser, seeded: GatewayService) -> None:
    created = httpx.post(
        seeded.url + "/api/v1/keys",
        headers=seeded.headers(),
        json={"name": "discovery-dashboard", "team": "discovery", "scope": "read:team"},
    ).json()
    context = browser.new_context(base_url=seeded.url)
    page = context.new_page()
    problems = watch(page, seeded.url)
    page.goto("/login?next=/features")
    page.fill("input[name=key]", created["key"])
    page.click("button[type=submit]")
    page.wait_for_url(seeded.url + "/features")
    settled(page)
    expect(page.locator(".topbar .scope")).to_have_text("team discovery")
    features = set(column(page, "feature-table", "Feature"))
    assert {"search", "summarize"} <= features and not features & {"support", "chat"}
    # alerts span every team: no link to them, and the page refuses the key
    assert "Alerts" not in page.locator(".topbar nav").inner_text()
    assert page.request.get("/alerts").status == 403

    httpx.delete(seeded.url + f"/api/v1/keys/{created['key_id']}", headers=seeded.headers())
    page.goto("/features")
    assert urlsplit(page.url).path == "/login"
    context.close()
    assert problems == []


def test_sign_in_refuses_other_sites_and_foreign_redirects(seeded: GatewayService) -> None:
    form = {"key": MASTER_KEY, "next": "//evil.example/steal"}
    reply = httpx.post(seeded.url + "/login", data=form, headers={"origin": "https://evil.example"})
    assert reply.status_code == 403
    for foreign in ("//evil.example/steal", "/\\evil.example", "/\t/evil.example", "https://evil.example"):
        reply = httpx.post(seeded.url + "/login", data={**form, "next": foreign}, headers={"origin": seeded.url})
        assert reply.status_code == 303 and reply.headers["location"] == "/", foreign
    reply = httpx.post(seeded.url + "/login", data={**form, "next": "/users?since=24h"})
    assert reply.status_code == 303 and reply.headers["location"] == "/users?since=24h"
    assert httpx.get(seeded.url + "/users").status_code == 303


def test_every_page_shows_the_seeded_traffic(page: Page) -> None:
    shots = os.environ.get("MLINE_SCREENSHOTS")
    for path, names in PAGES.items():
        open_page(page, path)
        content = page.locator("main").inner_text()
        for name in names:
            assert name in content or page.locator(f"main svg text:text-is({name!r})").count(), f"{path}: {name}"
        if path not in ("/requests", "/pricing"):
            assert page.locator("main .js-plotly-plot").count(), path
        assert page.locator("main tbody tr").count() or page.locator(".stat").count(), path
        if shots:
            Path(shots).mkdir(parents=True, exist_ok=True)
            name = path.strip("/") or "overview"
            page.screenshot(path=str(Path(shots) / f"{name}.png"), full_page=True)


def test_names_from_traffic_are_shown_as_text(page: Page) -> None:
    open_page(page, "/features")
    assert HOSTILE in column(page, "feature-table", "Feature")
    assert page.evaluate("window.pwned") is None


def test_a_filter_carries_to_other_pages(page: Page) -> None:
    open_page(page, "/features?since=24h")
    page.fill(".filters input[name=feature]", "search")
    page.click(".filters button[type=submit]")
    page.wait_for_url(re.compile(r"feature=search"))
    assert query(page) == {"since": ["24h"], "feature": ["search"]}
    page.click("nav >> text=Requests")
    settled(page)
    assert query(page) == {"since": ["24h"], "feature": ["search"]}
    assert page.input_value(".filters input[name=feature]") == "search"
    features = column(page, "request-log", "Feature")
    assert len(features) == 5 and set(features) == {"search"}


def test_clicking_a_bar_opens_its_requests(page: Page) -> None:
    open_page(page, "/")
    click_bar(page, "top-feature", "summarize")
    page.wait_for_url(re.compile(r"/requests\?"))
    settled(page)
    assert query(page)["feature"] == ["summarize"]
    assert column(page, "request-log", "Feature") == ["summarize"]
    assert column(page, "request-log", "Model") == ["gpt-4o"]


def test_clicking_a_time_bucket_opens_its_requests(page: Page) -> None:
    open_page(page, "/features?since=24h")
    assert "by hour" in page.locator("#feature-cost .chips [aria-current]").inner_text()
    click_middle(page, page.locator("#feature-cost .bars .point path").first)
    page.wait_for_url(re.compile(r"/requests\?"))
    settled(page)
    chosen = query(page)
    assert {"since", "until", "feature"} <= set(chosen)
    assert set(column(page, "request-log", "Feature")) == set(chosen["feature"])


def test_one_request_shows_attempts_and_attribution(page: Page) -> None:
    open_page(page, "/requests?feature=summarize")
    page.locator("#request-log tbody a").first.click()
    settled(page)
    assert "open" in query(page)
    assert column(page, "request-detail", "Model") == ["gpt-4o"]
    fields = column(page, "request-detail", "Field", table=1)
    attribution = dict(zip(fields, column(page, "request-detail", "Value", table=1), strict=True))
    assert attribution["feature"] == "summarize" and attribution["user"] == "bob"
    assert attribution["team"] == "discovery" and attribution["key_id"] == "master"


def test_an_agent_run_is_a_waterfall_of_its_steps(page: Page) -> None:
    open_page(page, "/agents")
    page.click("#run-table a:text-is('run-7')")
    settled(page)
    assert query(page)["run"] == ["run-7"]
    steps = page.locator("#run-waterfall .bars .point path")
    expect(steps).to_have_count(3)
    click_middle(page, steps.first)
    page.wait_for_url(re.compile(r"/requests\?"))
    settled(page)
    assert column(page, "request-log", "Feature") == ["agent"]
    assert "run-7" in column(page, "request-detail", "Value", table=1)


def test_an_empty_range_says_so(page: Page) -> None:
    open_page(page, "/?since=2001-01-01T00:00&until=2001-01-02T00:00")
    for card in ("trend", "top-feature", "top-user", "top-model", "unattributed"):
        expect(page.locator(f"#{card}")).to_have_text("No data in this range")
    assert page.input_value(".custom input[name=since]") == "2001-01-01T00:00"


def test_plotly_is_served_locally_and_compressed(seeded: GatewayService) -> None:
    login_form = httpx.get(seeded.url + "/login")
    assert "frame-ancestors 'none'" in login_form.headers["content-security-policy"]
    session = httpx.post(seeded.url + "/login", data={"key": MASTER_KEY, "next": "/"}).cookies
    overview = httpx.get(seeded.url + "/", cookies=session).text
    plotly_url = re.search(r'src="(/static/vendor/plotly-[^"]+)"', overview)
    assert plotly_url is not None
    reply = httpx.get(seeded.url + plotly_url.group(1), headers={"accept-encoding": "gzip"})
    assert reply.status_code == 200 and reply.headers["content-encoding"] == "gzip"
    assert "immutable" in reply.headers["cache-control"] and len(reply.content) > 1_000_000
    assert httpx.get(seeded.url + "/static/%2E%2E/dashboard.py").status_code == 404


@pytest.fixture(scope="module")
def leaky(mock_provider: Service, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayService]:
    """A gateway serving a store that `meterline simulate` filled with a week of traffic and every leak."""
    folder = tmp_path_factory.mktemp("leaky-dashboard")
    store = folder / "data" / "meterline.duckdb"
    made = run_cli(
        "simulate", "--store", str(store), "--days", "7", "--incidents", "none", "--leaks", "all", cwd=folder
    )
    assert made.returncode == 0, made.stderr
    gateway = start_gateway(folder, mock_provider)
    yield gateway
    gateway.stop()


@pytest.fixture
def leaky_page(browser: Browser, leaky: GatewayService) -> Iterator[Page]:
    context = browser.new_context(base_url=leaky.url, viewport={"width": 1400, "height": 900})
    page = context.new_page()
    problems = watch(page, leaky.url)
    page.goto("/login?next=/insights")
    page.fill("input[name=key]", MASTER_KEY)
    page.click("button[type=submit]")
    page.wait_for_url(leaky.url + "/insights")
    settled(page)
    yield page
    context.close()
    assert problems == []


def test_the_insights_page_lists_every_leak_costliest_first(leaky_page: Page) -> None:
    page = leaky_page
    findings = page.locator("#insight-list li.finding")
    expect(findings).to_have_count(9)
    detectors = {findings.nth(index).get_attribute("data-detector") for index in range(9)}
    assert detectors == {
        "retry_amplifier", "system_prompt_tax", "model_mismatch", "embedding_leak", "context_growth",
        "agent_loops", "unattributed_spend", "output_bloat",
    }  # fmt: skip
    amounts = [dollars(text) for text in page.locator("#insight-list .finding-money strong").all_inner_texts()]
    assert amounts == sorted(amounts, reverse=True) and amounts[0] > 500  # the long-context calls lead
    first = findings.first
    expect(first).to_contain_text("contract-review")
    expect(first).to_contain_text("Fix: Keep each call under 200,000 input tokens")
    first.locator("details.evidence summary").click()
    expect(first.locator("details.evidence dl")).to_contain_text("tier threshold tokens")
    assert page.locator("#insight-stats .stat").count() == 4
    if shots := os.environ.get("MLINE_SCREENSHOTS"):
        Path(shots).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(shots) / "insights.png"), full_page=True)


def test_a_finding_opens_its_requests(leaky_page: Page) -> None:
    page = leaky_page
    page.locator("#insight-list li[data-detector=model_mismatch] .where a").click()
    page.wait_for_url(re.compile(r"/requests\?"))
    settled(page)
    assert query(page)["feature"] == ["classify"] and query(page)["model"] == ["gpt-4o"]
    assert set(column(page, "request-log", "Feature")) == {"classify"}


def test_a_bar_of_the_insights_chart_opens_its_requests(leaky_page: Page) -> None:
    click_bar(leaky_page, "insight-chart", "output_bloat · faq-bot")
    leaky_page.wait_for_url(re.compile(r"/requests\?"))
    settled(leaky_page)
    assert query(leaky_page)["feature"] == ["faq-bot"]


def test_the_overview_forecasts_each_team_with_an_interval(leaky_page: Page, leaky: GatewayService) -> None:
    open_page(leaky_page, "/")
    teams = column(leaky_page, "forecast-team", "Team")
    assert {"legal", "assistant", "research"} <= set(teams)
    intervals = column(leaky_page, "forecast-team", "90.0% interval")
    assert all(" to " in text for text in intervals)
    expect(leaky_page.locator("#forecast .note")).to_contain_text("with 90.0% confidence")
    # Which feature projects highest depends on the weekday and hour the simulated week ends at, so the
    # table is checked against the API it renders (the projection itself is tested at a fixed clock).
    features = column(leaky_page, "forecast-feature", "Feature")
    projected = [dollars(text) for text in column(leaky_page, "forecast-feature", "Projected")]
    assert projected == sorted(projected, reverse=True) and "contract-review" in features
    served = httpx.get(
        leaky.url + "/api/v1/forecast",
        params={"group_by": "feature", "limit": 10},
        headers={"authorization": f"Bearer {MASTER_KEY}"},
    ).json()["groups"]
    assert set(features) == {row["value"] or "(not set)" for row in served if row["projected_month_end_usd"] > 0}
