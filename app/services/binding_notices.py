"""The beneficiary's side of a binding (R21): inbox notices about bindings that name them.

Every authorization event passes through ``bindings.add_event``, which calls ``on_event``: the
beneficiary hears when a binding naming them is created, becomes active, is suspended or resumed,
and ends (unbound or rejected) — they should know whose account pays for them. The owner hears
when the beneficiary declines. The notices name the relationship (from the reader's side) and the
binding id; ``GET /bindings/{id}`` shows the masked parties. A notice keeps the event's reason only
when its reader may read it (``authorizations.reason_readable_by``): a beneficiary told that their
owner's co-pay use is suspended learns the fact, never staff's reason about the owner (R11, R16).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.orm import Session

from app.policy import inverse_relationship
from app.services.authorizations import reason_readable_by
from models import AuthorizationEvent, Binding
from notify.person_notices import add_person_notice

# authorization event → (who is told, the notice's event)
_TOLD = {
    "created": ("beneficiary", "created"),
    "activated": ("beneficiary", "active"),
    "suspended": ("beneficiary", "suspended"),
    "lifted": ("beneficiary", "resumed"),
    "unbound": ("beneficiary", "ended"),
    "rejected": ("beneficiary", "ended"),
    "declined": ("owner", "declined"),
}
_WORDS = {"spouse": "配偶", "parent": "父母", "child": "子女", "sibling": "兄弟姐妹", "grandparent": "祖父母/外祖父母",
          "grandchild": "孙子女/外孙子女"}
_MESSAGES = {
    "created": "您的{who}申请用其医保个人账户为您支付门诊费用（家庭共济），状态：{status}。"
               "如有疑问请到医保经办窗口咨询。",
    "active": "您的{who}为您开通的家庭共济已生效，其医保个人账户可为您支付门诊费用。",
    "suspended": "您的{who}为您开通的家庭共济已被暂停，暂停期间不再为您支付。",
    "resumed": "您的{who}为您开通的家庭共济已恢复。",
    "ended": "您的{who}为您开通的家庭共济已终止，其账户不再为您支付。",
    "declined": "您的{who}拒绝了您发起的家庭共济绑定。",
}
_STATUS_WORDS = {"active": "已生效", "pending_review": "待审核", "pending_consent": "待您确认", "suspended": "已暂停",
                 "unbound": "已解绑", "rejected": "已拒绝"}


def on_event(session: Session, event: AuthorizationEvent, at: datetime) -> None:
    """Write the inbox notice an authorization event calls for (in the event's transaction)."""
    told = _TOLD.get(event.event)
    if told is None:
        return
    side, kind = told
    binding = session.get(Binding, event.binding_id)
    if binding is None:
        return
    if kind == "active" and binding.created_at == at:
        return  # created active at once: the "created" notice already says so
    if side == "beneficiary":
        person_id, who = binding.beneficiary_person_id, inverse_relationship(binding.relationship)
    else:
        person_id, who = binding.owner_person_id, binding.relationship
    session.flush()  # the event's id makes the notice's key (a binding may be suspended twice)
    readable = reason_readable_by(event.event, event.details, side)
    add_person_notice(session, person_id=person_id, kind="binding", event_key=f"ae{event.id}", at=at, content={
        "event": kind, "binding_id": binding.id, "relationship": who, "status": binding.status,
        "reason": event.reason if readable else None,
        "message": _MESSAGES[kind].format(who=_WORDS.get(who, "家人"), status=_STATUS_WORDS.get(binding.status, "")),
    })
