"""A small family and a load generator for the fault tests: threads that each issue a 亲情码 and
settle with it, over and over, recording every status, while the test breaks something."""

from __future__ import annotations

import secrets
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select

from app.extensions import app_session
from models import User
from tests.conftest import TEMPLATE_DEDUCTION
from tests.helpers import bearer
from tests.money_helpers import CHILD, OWNER, drug, fresh, make_binding, person_id, settle, sign_in


@dataclass
class Family:
    owner_token: str
    openid: str
    child_id: int


def family(app: Any, client: Any, sandbox: Any) -> Family:
    """张伟 bound to his child, signed in from WeChat with a long-term consent to deduction notices."""
    fresh(app)
    make_binding(app, OWNER, CHILD, "child")
    token = sign_in(client, sandbox, OWNER)
    with app_session() as session, session.begin():
        openid = session.scalar(select(User.wechat_openid).where(User.person_id == person_id(app, OWNER)))
    sandbox.grant_wechat_consent(openid, TEMPLATE_DEDUCTION, "long_term")
    response = client.post("/api/v1/subscriptions", headers=bearer(token), json={
        "channel": "wechat", "mode": "long_term", "results": {TEMPLATE_DEDUCTION: "accept"}})
    assert response.status_code == 200, response.get_json()
    return Family(token, openid, person_id(app, CHILD))


@dataclass
class Load:
    """``threads`` clients settling in a loop until ``stop()``; ``settled`` maps out_no → settlement_no."""

    app: Any
    fam: Family
    threads: int = 3
    statuses: Counter = field(default_factory=Counter)
    settled: dict[str, str] = field(default_factory=dict)
    unanswered: list[tuple[str, str]] = field(default_factory=list)  # (voucher, out_no) that got a 503
    errors: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _workers: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> Load:
        for n in range(self.threads):
            worker = threading.Thread(target=self._run, args=(n,), daemon=True)
            worker.start()
            self._workers.append(worker)
        return self

    def stop(self) -> None:
        self._stop.set()
        for worker in self._workers:
            worker.join(timeout=60)

    def _note(self, what: str, response: Any) -> None:
        with self._lock:
            self.statuses[(what, response.status_code)] += 1
            if response.status_code >= 500 and response.status_code != 503:
                self.errors.append(f"{what}: {response.status_code} {response.get_data(as_text=True)[:200]}")
            if response.status_code == 503 and "Retry-After" not in response.headers:
                self.errors.append(f"{what}: 503 without Retry-After")

    def _run(self, n: int) -> None:
        client = self.app.test_client()
        headers = bearer(self.fam.owner_token)
        while not self._stop.is_set():
            try:
                issued = client.post("/api/v1/vouchers", json={"person_id": self.fam.child_id}, headers=headers)
                self._note("voucher", issued)
                me = client.get("/api/v1/me", headers=headers)
                self._note("me", me)
                if issued.status_code != 201:
                    time.sleep(0.05)
                    continue
                code, out_no = issued.get_json()["code"], f"OUT-{n}-{secrets.token_hex(5)}"
                response = settle(client, code, [drug(101)], out_no=out_no)
                self._note("settle", response)
                with self._lock:
                    if response.status_code == 201:
                        self.settled[out_no] = response.get_json()["settlement_no"]
                    elif response.status_code == 503:
                        self.unanswered.append((code, out_no))
            except Exception as exc:  # noqa: BLE001 — a test-client exception is a finding, not a crash
                with self._lock:
                    self.errors.append(f"exception {type(exc).__name__}: {exc}"[:300])
                time.sleep(0.05)

    def retry_unanswered(self, client: Any) -> int:
        """Sign each 503'd settlement again (same body, new nonce): each settles once or is already settled."""
        done = 0
        for code, out_no in self.unanswered:
            response = settle(client, code, [drug(101)], out_no=out_no)
            assert response.status_code in (200, 201), response.get_json()
            self.settled[out_no] = response.get_json()["settlement_no"]
            done += 1
        return done
