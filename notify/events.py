"""Apply one WeChat message-push event to consent and delivery state (R15), in one transaction.

``subscribe_msg_popup_event``: the user's choices in a subscription popup.
``subscribe_msg_change_event``: the user changed a template in the service-notification settings.
``subscribe_msg_sent_event``: WeChat's final delivery result of a message we sent (by MsgID).
https://developers.weixin.qq.com/miniprogram/dev/OpenApiDoc/mp-message-management/subscribe-message/sendMessage.html
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from models import User
from notify import consent
from notify.delivery import SentResult, record_sent_results

log = logging.getLogger(__name__)

POPUP_EVENT = "subscribe_msg_popup_event"
CHANGE_EVENT = "subscribe_msg_change_event"
SENT_EVENT = "subscribe_msg_sent_event"


@dataclass(frozen=True)
class PushEvent:
    """A parsed push: who (openid), which event, when (CreateTime as sent), and its items."""

    openid: str
    event: str
    create_time: str
    items: list[dict[str, Any]] = field(default_factory=list)


def _text(item: dict[str, Any], key: str) -> str:
    value = item.get(key)
    return "" if value is None else str(value).strip()


def apply_push_event(session: Session, event: PushEvent, now: datetime) -> str:
    """Apply the event; returns what happened (for the log): applied | unknown_user | ignored."""
    if event.event not in (POPUP_EVENT, CHANGE_EVENT, SENT_EVENT):
        return "ignored"
    with session.begin():
        user_id = session.scalar(select(User.id).where(User.wechat_openid == event.openid))
        if user_id is None:
            log.info("%s for an openid we do not know; ignored", event.event)
            return "unknown_user"
        if event.event == SENT_EVENT:
            results = [SentResult(_text(i, "TemplateId"), _text(i, "MsgID"), _text(i, "ErrorCode") or "0",
                                  _text(i, "ErrorStatus")) for i in event.items if _text(i, "MsgID")]
            record_sent_results(session, user_id, results, now)
            return "applied"
        kind = "popup" if event.event == POPUP_EVENT else "change"
        choices = [
            consent.Choice(_text(i, "TemplateId"), _text(i, "SubscribeStatusString"), kind,
                           event_key=consent.event_key(event.openid, event.create_time, event.event, n,
                                                       _text(i, "TemplateId")))
            for n, i in enumerate(event.items)
            if _text(i, "TemplateId") and _text(i, "SubscribeStatusString") in consent.RESULTS
        ]
        consent.apply_choices(session, user_id, "wechat", "wechat_event", choices, now)
        return "applied"
