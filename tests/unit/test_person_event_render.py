"""Binding and identity notices rendered into the receipt template (R21), within platform limits."""

from __future__ import annotations

import pytest

from notify.channels import NoticeView, record_page
from notify.channels import alipay as alipay_channel
from notify.channels import wechat as wechat_channel
from sandbox.wechat import data_value_valid

TIME = "2026-03-01T01:30:00+00:00"


@pytest.mark.parametrize(("kind", "content", "phrase", "who", "ref"), [
    ("binding", {"event": "created", "status": "pending_review", "binding_id": 7, "relationship": "parent"},
     "共济申请", "本人", "B7"),
    ("binding", {"event": "created", "status": "active", "binding_id": 7, "relationship": "parent"},
     "共济生效", "本人", "B7"),
    ("binding", {"event": "suspended", "binding_id": 8, "relationship": "child"}, "共济暂停", "本人", "B8"),
    ("binding", {"event": "declined", "binding_id": 9, "relationship": "spouse"}, "对方拒绝", "配偶", "B9"),
    ("identity", {"event": "linked"}, "新账号", "本人", "U42"),
])
def test_person_events_fill_the_receipt_template_truthfully(kind, content, phrase, who, ref):
    notice = NoticeView(42, kind, None, {**content, "time": TIME})
    data = wechat_channel.render_data(notice)
    assert data == {"phrase1": phrase, "name2": who, "thing3": data["thing3"], "amount4": "¥0.00",
                    "time5": "2026-03-01 09:30", "character_string6": ref}
    assert all(data_value_valid(key, value) for key, value in data.items())
    keywords = alipay_channel.render_data(notice)
    assert keywords["keyword1"] == phrase and keywords["keyword6"] == ref
    assert all(len(value) <= 50 for value in keywords.values())
    assert record_page(notice) == "pages/notifications/index?notice_id=42"
