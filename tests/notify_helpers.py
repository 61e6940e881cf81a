"""Helpers for notice tests: the minimal rows a notice needs, written straight through the models.

The settlement engine is not used here: ``NotifyWorld.settle`` writes a voucher and a settlement
row and calls ``notify.outbox.add_money_notices`` in the same transaction, exactly as the engine
does, then hands the delivery ids to the app's notifier.
"""

from __future__ import annotations

import itertools
import secrets
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy import select

from app.extensions import app_session
from app.security.id_number import make_id_number
from app.security.pii import mask_name
from app.services.registry import load_registry
from models import Delivery, Institution, Notice, Person, Refund, Settlement, User, Voucher
from notify import consent
from notify.outbox import AccountMovement, MoneyEvent, add_money_notices

_serial = itertools.count(1)


class FakeClock:
    """A clock the deliverer reads; tests move it forward."""

    def __init__(self, start: datetime | None = None):
        self.now = start or datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> datetime:
        self.now += timedelta(seconds=seconds)
        return self.now


@dataclass
class Party:
    """A registry person and their mini-program sign-ins."""

    name: str
    id_number: str
    person_id: int
    user_ids: dict[str, int] = field(default_factory=dict)
    openid: str | None = None
    alipay_user_id: str | None = None


@dataclass
class Settled:
    settlement_id: int
    settlement_no: str
    delivery_ids: list[int]


class NotifyWorld:
    """Persons, users, one institution, and money movements with their notices."""

    def __init__(self, app: Any, sandbox: Any, clock: FakeClock | None = None):
        self.app = app
        self.sandbox = sandbox
        self.clock = clock
        self.pii = app.extensions["domain"].pii
        self.institution_id: int | None = None

    @property
    def notifier(self) -> Any:
        return self.app.extensions["domain"].notifier

    def now(self) -> datetime:
        return self.clock() if self.clock else datetime.now(UTC)

    # --- people -------------------------------------------------------------------------------

    def person(self, name: str, *, wechat: bool = True, alipay: bool = False) -> Party:
        """A registry person with an account, signed in on the given platforms (emulator included)."""
        n = next(_serial)
        id_number = make_id_number("532621", date(1960, 1, 1) + timedelta(days=n * 37 % 15000),
                                   secrets.randbelow(1000))
        registry: dict[str, Any] = {
            "as_of": self.now().isoformat(),
            "persons": [{"id_number": id_number, "name": name, "social_card_no": f"M{n:014d}",
                         "insurance_type": "employee", "region_code": "532621", "status": "active"}],
            "accounts": [{"id_number": id_number, "balance_fen": 500000}],
            "households": [], "institutions": [],
        }
        if self.institution_id is None:
            registry["institutions"] = [{"code": f"H{n:07d}", "name": "文山州人民医院", "kind": "hospital",
                                         "region_code": "532601", "designated": True,
                                         "api_secret": secrets.token_hex(16)}]
        with app_session() as session:
            load_registry(session, self.pii, registry, self.now())
        with app_session() as session, session.begin():
            bidx = self.pii.blind_index(id_number, kind="id_number")
            person_id = session.scalar(select(Person.id).where(Person.id_number_bidx == bidx))
            if self.institution_id is None:
                self.institution_id = session.scalar(select(Institution.id).order_by(Institution.id.desc()))
        party = Party(name, id_number, person_id)
        if wechat:
            party.openid = "o" + secrets.token_hex(13)
            self.sandbox.issue_wechat_login_code(party.openid)  # WeChat now knows this user
            party.user_ids["wechat"] = self._user(person_id, "wechat", wechat_openid=party.openid)
        if alipay:
            party.alipay_user_id = "2088" + f"{secrets.randbelow(10**12):012d}"
            party.user_ids["alipay"] = self._user(person_id, "alipay", alipay_user_id=party.alipay_user_id)
        return party

    def _user(self, person_id: int, channel: str, **ids: str) -> int:
        now = self.now()
        with app_session() as session, session.begin():
            user = User(channel=channel, person_id=person_id, verified_at=now, last_login_at=now, created_at=now,
                        **ids)
            session.add(user)
            session.flush()
            return user.id

    # --- consent ------------------------------------------------------------------------------

    def subscribe(self, party: Party, channel: str, template_id: str, mode: str = "one_time",
                  count: int = 1) -> None:
        """The user accepts ``template_id`` ``count`` times: the platform and our records both know."""
        if channel == "wechat":
            self.sandbox.grant_wechat_consent(party.openid, template_id, mode, count)
        else:
            self.sandbox.grant_alipay_consent(party.alipay_user_id, template_id, mode, count)
        with app_session() as session, session.begin():
            for _ in range(count):
                consent.apply_choices(session, party.user_ids[channel], channel, "client",
                                      [consent.Choice(template_id, "accept", mode=mode)], self.now())

    # --- money movements ------------------------------------------------------------------------

    def settle(self, beneficiary: Party, payers: list[tuple[Party, str, int]], *, relationship: str = "child",
               receipt_channels: tuple[str, ...] = (), notify: bool = True) -> Settled:
        """A settlement paid by ``payers`` ((owner, own|copay, amount_fen), in payment order)."""
        at = self.now()
        total = sum(amount for _, _, amount in payers)
        own = sum(amount for _, kind, amount in payers if kind == "own")
        settlement_no = f"S{at:%Y%m%d}{next(_serial):010d}"
        with app_session() as session, session.begin():
            voucher = Voucher(code_hash=secrets.token_hex(32), person_id=beneficiary.person_id,
                              holder_person_id=beneficiary.person_id, expires_at=at + timedelta(minutes=2),
                              used_at=at, created_at=at)
            session.add(voucher)
            session.flush()
            settlement = Settlement(
                settlement_no=settlement_no, institution_id=self.institution_id,
                out_settlement_no=secrets.token_hex(8), request_hash=secrets.token_hex(32), voucher_id=voucher.id,
                beneficiary_person_id=beneficiary.person_id, service_time=at, status="settled",
                total_fen=total, eligible_fen=total, own_account_fen=own, copay_fen=total - own, cash_fen=0,
                refunded_fen=0, items=[], reasons=[], response={}, created_at=at,
            )
            session.add(settlement)
            session.flush()
            balance = 500000
            movements = []
            for owner, kind, amount in payers:
                balance -= amount
                movements.append(AccountMovement(owner.person_id, kind, amount, balance))
            event = MoneyEvent(settlement.id, settlement_no, beneficiary.person_id, mask_name(beneficiary.name),
                               "文山州人民医院", at,
                               relationships={owner.person_id: relationship for owner, _, _ in payers})
            delivery_ids = add_money_notices(session, event, movements, receipt_channels=receipt_channels)
        if notify:
            self.notifier.committed(delivery_ids)
        return Settled(settlement.id, settlement_no, delivery_ids)

    def failed_push(self, template_id: str) -> tuple[Party, int]:
        """张伟 pays 100 fen for 张小明 and WeChat refuses the deduction push for good (47003): the
        owner and the failed delivery's id."""
        owner, child = self.person("张伟"), self.person("张小明")
        self.subscribe(owner, "wechat", template_id)
        self.sandbox.inject_fault("wechat.subscribe_send", errcode=47003)
        (delivery_id,) = self.settle(child, [(owner, "copay", 100)]).delivery_ids
        self.notifier.drain()
        self.sandbox.clear_faults()
        return owner, delivery_id

    def refund(self, settled: Settled, beneficiary: Party, credits: list[tuple[Party, str, int]]) -> list[int]:
        """A refund crediting ``credits`` back to the owners' accounts."""
        at = self.now()
        amount = sum(a for _, _, a in credits)
        with app_session() as session, session.begin():
            refund = Refund(refund_no=f"R{next(_serial):012d}", settlement_id=settled.settlement_id,
                            institution_id=self.institution_id, out_refund_no=secrets.token_hex(8),
                            request_hash=secrets.token_hex(32), amount_fen=amount, cash_fen=0, cap_restored_fen=0,
                            response={}, created_at=at)
            session.add(refund)
            session.flush()
            event = MoneyEvent(settled.settlement_id, settled.settlement_no, beneficiary.person_id,
                               mask_name(beneficiary.name), "文山州人民医院", at, refund_id=refund.id)
            delivery_ids = add_money_notices(
                session, event, [AccountMovement(o.person_id, k, a, 500000) for o, k, a in credits])
        self.notifier.committed(delivery_ids)
        return delivery_ids

    # --- looking -------------------------------------------------------------------------------

    def deliveries(self, delivery_ids: list[int] | None = None) -> list[Delivery]:
        with app_session() as session, session.begin():
            query = select(Delivery).order_by(Delivery.id)
            if delivery_ids is not None:
                query = query.where(Delivery.id.in_(delivery_ids))
            return list(session.scalars(query))

    def delivery(self, delivery_id: int) -> Delivery:
        (found,) = self.deliveries([delivery_id])
        return found

    def notices(self, person_id: int) -> list[Notice]:
        with app_session() as session, session.begin():
            return list(session.scalars(select(Notice).where(Notice.person_id == person_id).order_by(Notice.id)))

    def consent(self, party: Party, channel: str, template_id: str) -> dict[str, Any]:
        with app_session() as session, session.begin():
            listing = consent._listing(session, party.user_ids[channel], channel, [template_id])
        return listing["items"][0]
