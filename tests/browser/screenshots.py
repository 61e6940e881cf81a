"""``make screenshots``: the console's main pages as PNG under docs/console/ (for the README).

Not collected by ``make test`` (the name does not start with ``test_``); ``make screenshots`` runs it
explicitly. It builds a small, realistic day at the window through the real API and services —
demo registry, a window binding, an online binding waiting for review with its scan, settlements
and a refund, a failed and a never-consented push, a suspension, a filing — then photographs the
pages in headless Chromium. Chinese text needs a CJK font (Debian: fonts-wqy-microhei).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.binding_helpers import CHILD, OWNER, PARENT, SPOUSE, bind, bind_at_window, created, upload
from tests.binding_helpers import sign_in as user_sign_in
from tests.browser.test_console_browser import png_proof, sign_in
from tests.conftest import TEMPLATE_DEDUCTION
from tests.helpers import bearer
from tests.money_helpers import drug, fresh, issue, item, person_id, refund, settle

pytestmark = pytest.mark.browser
OUT = Path(__file__).resolve().parents[2] / "docs" / "console"


def _a_day_at_the_window(app, client, sandbox, demo) -> dict[str, int]:
    fresh(app)
    window, admin = bearer(demo.tokens["window1"]), bearer(demo.tokens["admin1"])
    window_binding = created(bind_at_window(client, demo.tokens["window1"], OWNER, CHILD, "child"))
    spouse = user_sign_in(client, sandbox, SPOUSE)
    pending = created(bind(client, spouse, PARENT, "parent", [created(upload(client, spouse, png_proof()))["id"]]))
    owner = user_sign_in(client, sandbox, OWNER)
    client.post("/api/v1/subscriptions", headers=bearer(owner), json={
        "channel": "wechat", "mode": "one_time", "results": {TEMPLATE_DEDUCTION: "accept"}})
    notifier = app.extensions["domain"].notifier
    child = person_id(app, CHILD)
    sandbox.inject_fault("wechat.subscribe_send", errcode=47003)
    first = settle(client, issue(client, owner, child), [drug(12_800), item("consultation", 2_500)])
    notifier.drain()
    sandbox.clear_faults()
    for amount in (5_600, 23_400, 8_900):
        settle(client, issue(client, owner, child), [drug(amount)])
    refund(client, first.get_json()["settlement_no"], 2_500)
    notifier.drain()
    client.post("/api/v1/staff/suspensions", headers=admin,
                json={"beneficiary_id_number": PARENT, "reason": "核查中：疑似倒卖药品"})
    client.post("/api/v1/staff/offsite-filings", headers=window, json={
        "id_number": CHILD, "region_prefix": "53", "valid_from": "2026-01-01", "valid_to": "2026-12-31"})
    return {"window_binding": window_binding["id"], "pending": pending["id"]}


def test_screenshots_of_the_main_pages(page, app, client, sandbox, demo):
    OUT.mkdir(parents=True, exist_ok=True)
    ids = _a_day_at_the_window(app, client, sandbox, demo)

    def shot(name: str) -> None:
        page.screenshot(path=str(OUT / f"{name}.png"), full_page=True)

    page.goto("/console/login")
    shot("01-login")
    sign_in(page, app, "admin-demo", "admin")
    shot("02-overview")
    page.goto("/console/reviews")
    shot("03-reviews")
    page.goto(f"/console/bindings/{ids['pending']}")
    page.wait_for_load_state("networkidle")
    shot("04-review-binding")
    page.goto("/console/window-binding")
    shot("05-window-binding")
    page.goto(f"/console/bindings/{ids['window_binding']}/certificate")
    page.emulate_media(media="print")
    shot("06-certificate-print")
    page.emulate_media(media="screen")
    page.goto("/console/persons")
    page.fill("#id_number", OWNER)
    page.click("#look-up")
    shot("07-person-lookup")
    page.goto("/console/suspensions")
    shot("08-suspensions")
    page.goto("/console/deliveries?state=failed")
    shot("09-deliveries")
    page.goto("/console/audit")
    shot("10-audit-log")
