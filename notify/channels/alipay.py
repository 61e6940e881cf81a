"""Alipay mini-program subscription messages (R15): keyword1…n, each value at most 50 characters.

Keyword order is the order of the template's fields as configured in the Alipay console; the
layouts below are this service's templates. Amounts are yuan strings from ``fen_to_yuan_str``.
https://opendocs.alipay.com/mini/02cth2
"""

from __future__ import annotations

from typing import Any

from app.platforms.alipay import fen_to_yuan_str
from notify.channels import (
    CHANGE_WORDS,
    Message,
    NoticeView,
    Recipient,
    change_kind,
    clip,
    local_time,
    record_page,
    relationship_word,
)
from notify.channels.person_events import PERSON_EVENT_KINDS, person_event_values

VALUE_LIMIT = 50


def _yuan(fen: Any) -> str:
    return fen_to_yuan_str(int(fen or 0)) + "元"


def render_data(notice: NoticeView) -> dict[str, str]:
    c = notice.content
    if notice.kind in PERSON_EVENT_KINDS:
        values = list(person_event_values(notice).values())
        return {f"keyword{i}": clip(value, VALUE_LIMIT) for i, value in enumerate(values, start=1)}
    if notice.kind == "receipt":
        values = [CHANGE_WORDS["receipt"], c.get("beneficiary") or "*", c.get("institution") or "定点医药机构",
                  _yuan(c["amount_fen"]), local_time(notice), notice.settlement_no]
    else:
        values = [CHANGE_WORDS[change_kind(notice)], c.get("beneficiary") or "*", relationship_word(notice),
                  c.get("institution") or "定点医药机构", _yuan(c["amount_fen"]), _yuan(c.get("balance_after_fen")),
                  local_time(notice), notice.settlement_no]
    return {f"keyword{i}": clip(value, VALUE_LIMIT) for i, value in enumerate(values, start=1)}


class AlipayChannel:
    """Template messages through ``app.platforms.alipay.AlipayGateway``."""

    name = "alipay"

    def __init__(self, gateway: Any, templates: dict[str, str | None]):
        self.gateway = gateway
        self.templates = templates

    def template_for(self, kind: str) -> str | None:
        return self.templates.get(kind) or None

    def can_reach(self, recipient: Recipient) -> bool:
        return bool(recipient.alipay_user_id or recipient.alipay_open_id)

    def render(self, notice: NoticeView, template_id: str) -> Message:
        return Message(template_id, render_data(notice), record_page(notice))

    def send(self, recipient: Recipient, message: Message) -> str | None:
        # An app in OpenID mode knows its users only by open_id; send to whichever id we have.
        if recipient.alipay_user_id:
            target = {"to_user_id": recipient.alipay_user_id}
        else:
            target = {"to_open_id": recipient.alipay_open_id}
        self.gateway.send_template_message(**target, template_id=message.template_id, data=message.data,
                                           page=message.page)
        return None
