"""Binding and identity notices (R21) in the receipt template's six keywords.

The receipt template (共济支付回执) is the one template a beneficiary has consented to; a
binding or identity event fills it truthfully as: what happened (≤ 5 Hanzi), who (本人 or the
family member), what it concerns, ¥0.00 (no money moved), when, and a reference (B<binding id> or
U<notice id>). The full text is in the inbox.
"""

from __future__ import annotations

from notify.channels import RELATIONSHIP_WORDS, NoticeView, local_time

PERSON_EVENT_KINDS = ("binding", "identity")
EVENT_WORDS = {"created": "共济申请", "active": "共济生效", "suspended": "共济暂停", "resumed": "共济恢复",
               "ended": "共济终止", "declined": "对方拒绝", "linked": "新账号",
               "unlinked": "账号解除"}


def person_event_values(notice: NoticeView, layout: tuple[tuple[str, str], ...] | None = None) -> dict[str, str]:
    """Keyword → value (keys from ``layout`` when given, else positional names)."""
    c = notice.content
    event = str(c.get("event") or "")
    if notice.kind == "identity":
        who, what, reference = "本人", "医保账号绑定", f"U{notice.id}"
    else:
        who = RELATIONSHIP_WORDS.get(str(c.get("relationship")), "家人") if event == "declined" else "本人"
        what, reference = "家庭共济绑定", f"B{c.get('binding_id')}"
    word = EVENT_WORDS["active"] if event == "created" and c.get("status") == "active" else EVENT_WORDS.get(event)
    values = [word or "账户提醒", who, what, "¥0.00", local_time(notice), reference]
    keys = [key for key, _field in layout] if layout else [f"v{i}" for i in range(1, len(values) + 1)]
    return dict(zip(keys, values, strict=True))
