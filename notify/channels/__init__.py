"""Per-platform rendering and sending of one notice (R15).

A channel turns a notice's masked content into the data of the platform's template (within that
platform's field limits) and sends it. ``render`` is pure; ``send`` is the only network call and
raises ``app.platforms.PlatformError``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol
from zoneinfo import ZoneInfo

SHANGHAI = ZoneInfo("Asia/Shanghai")
# The mini-program page a push opens: the record of that settlement.
RECORD_PAGE = "pages/records/detail"
INBOX_PAGE = "pages/notifications/index"

RELATIONSHIP_WORDS = {
    "self": "本人", "spouse": "配偶", "parent": "父母", "child": "子女", "sibling": "兄弟姐妹",
    "grandparent": "祖父母", "grandchild": "孙子女",
}
# What happened, as the owner reads it (≤ 5 Hanzi, WeChat "phrase").
CHANGE_WORDS = {"own": "个账支付", "copay": "共济支付", "refund": "退款入账", "receipt": "共济支付"}


@dataclass(frozen=True)
class NoticeView:
    """What a channel needs of a notice."""

    id: int
    kind: str  # deduction | refund | receipt
    settlement_no: str
    content: dict[str, Any]


@dataclass(frozen=True)
class Recipient:
    """The platform identity of the user a delivery goes to."""

    wechat_openid: str | None = None
    alipay_user_id: str | None = None
    alipay_open_id: str | None = None


@dataclass(frozen=True)
class Message:
    template_id: str
    data: dict[str, str]
    page: str


class Channel(Protocol):
    name: str

    def template_for(self, kind: str) -> str | None:
        """The template a notice of this kind is pushed with, or None when none is configured."""

    def can_reach(self, recipient: Recipient) -> bool:
        """Whether the recipient has an identity on this platform."""

    def render(self, notice: NoticeView, template_id: str) -> Message:
        """The template data for this notice, within the platform's limits."""

    def send(self, recipient: Recipient, message: Message) -> str | None:
        """Push it; return the platform's message id when it gives one."""


def change_kind(notice: NoticeView) -> str:
    """own | copay | refund | receipt: what the push says happened."""
    if notice.kind in ("refund", "receipt"):
        return notice.kind
    return "own" if notice.content.get("relationship") == "self" else "copay"


def relationship_word(notice: NoticeView) -> str:
    return RELATIONSHIP_WORDS.get(notice.content.get("relationship") or "", "家庭成员")


def local_time(notice: NoticeView) -> str:
    """The movement's time in Asia/Shanghai, ``2025-03-01 09:30``."""
    return datetime.fromisoformat(notice.content["time"]).astimezone(SHANGHAI).strftime("%Y-%m-%d %H:%M")


def record_page(notice: NoticeView) -> str:
    if notice.settlement_no is None:  # binding and identity notices (R21): the inbox entry
        return f"{INBOX_PAGE}?notice_id={notice.id}"
    return f"{RECORD_PAGE}?settlement_no={notice.settlement_no}&notice_id={notice.id}"


def clip(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, the last one an ellipsis when cut."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
