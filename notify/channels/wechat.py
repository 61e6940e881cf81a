"""WeChat subscribe messages (R15): our templates' keywords and WeChat's value limits.

The keyword names below are those of the templates chosen for this service in the mini-program
console (订阅消息 → 我的模板); if a deployment picks other templates, change the layouts here.
Value limits by keyword type: thing ≤ 20 characters, name ≤ 10 Hanzi, phrase ≤ 5 Hanzi,
character_string ≤ 32 printable ASCII, amount = currency symbol + digits, time = ``%Y-%m-%d %H:%M``.
https://developers.weixin.qq.com/miniprogram/dev/OpenApiDoc/mp-message-management/subscribe-message/sendMessage.html
A value outside them is refused with 47003, which would be a permanent failure of every push.
"""

from __future__ import annotations

import re
from collections.abc import Callable
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

_FIELDS: dict[str, Callable[[NoticeView], str]] = {
    "change": lambda n: CHANGE_WORDS[change_kind(n)],
    "beneficiary": lambda n: n.content.get("beneficiary") or "*",
    "relationship": relationship_word,
    "institution": lambda n: n.content.get("institution") or "定点医药机构",
    "amount": lambda n: "¥" + fen_to_yuan_str(int(n.content["amount_fen"])),
    "balance_after": lambda n: "¥" + fen_to_yuan_str(int(n.content.get("balance_after_fen") or 0)),
    "time": local_time,
    "settlement_no": lambda n: n.settlement_no,
}

# 个人账户变动提醒: deductions and refund credits of the owner's account.
ACCOUNT_LAYOUT = (
    ("phrase1", "change"),  # 变动类型
    ("name2", "beneficiary"),  # 就诊人
    ("phrase3", "relationship"),  # 与您关系
    ("thing4", "institution"),  # 就诊机构
    ("amount5", "amount"),  # 变动金额
    ("amount6", "balance_after"),  # 账户余额
    ("time7", "time"),  # 变动时间
    ("character_string8", "settlement_no"),  # 结算单号
)
# 共济支付回执: the beneficiary's receipt (no owner balances in it).
RECEIPT_LAYOUT = (
    ("phrase1", "change"),  # 支付方式
    ("name2", "beneficiary"),  # 就诊人
    ("thing3", "institution"),  # 就诊机构
    ("amount4", "amount"),  # 共济金额
    ("time5", "time"),  # 支付时间
    ("character_string6", "settlement_no"),  # 结算单号
)
_KEY_TYPE = re.compile(r"([a-z_]+?)\d+")
_NOT_ASCII_VISIBLE = re.compile(r"[^\x21-\x7e]")


def fit(key: str, value: str) -> str:
    """``value`` within the limits of the keyword type of ``key`` (thing4 → thing)."""
    match = _KEY_TYPE.fullmatch(key)
    kind = match.group(1) if match else ""
    if kind == "thing":
        return clip(value, 20)
    if kind == "name":
        return value.strip()[:10]
    if kind == "phrase":
        return value[:5]
    if kind == "character_string":
        return _NOT_ASCII_VISIBLE.sub("", value)[:32]
    return value


def render_data(notice: NoticeView) -> dict[str, str]:
    if notice.kind in PERSON_EVENT_KINDS:
        return {key: fit(key, value) for key, value in person_event_values(notice, RECEIPT_LAYOUT).items()}
    layout = RECEIPT_LAYOUT if notice.kind == "receipt" else ACCOUNT_LAYOUT
    return {key: fit(key, _FIELDS[field](notice)) for key, field in layout}


class WeChatChannel:
    """Subscribe messages through ``app.platforms.wechat.WeChatGateway``."""

    name = "wechat"

    def __init__(self, gateway: Any, templates: dict[str, str | None], miniprogram_state: str = "formal"):
        """``templates`` maps a notice kind (deduction, refund, receipt) to a template id."""
        self.gateway = gateway
        self.templates = templates
        self.miniprogram_state = miniprogram_state

    def template_for(self, kind: str) -> str | None:
        return self.templates.get(kind) or None

    def can_reach(self, recipient: Recipient) -> bool:
        return bool(recipient.wechat_openid)

    def render(self, notice: NoticeView, template_id: str) -> Message:
        return Message(template_id, render_data(notice), record_page(notice))

    def send(self, recipient: Recipient, message: Message) -> str | None:
        return self.gateway.send_subscribe_message(
            recipient.wechat_openid, message.template_id, message.data, page=message.page,
            miniprogram_state=self.miniprogram_state,
        ) or None
