"""Chinese texts of the console: error codes, states, relationships.

The one place where an error code becomes the sentence a window clerk reads: ``error_text`` takes
it from the service's message catalogue (app/i18n.py), the same texts the API sends.
"""

from __future__ import annotations

from typing import Any

from app.i18n import message_for, translate

# Texts of the console's own situations, which are no error code of the API. Every other error
# code is worded once, in the service's message catalogue (app/i18n.py, app/translations/).
CONSOLE_ERRORS = {
    "CSRF": "页面已过期或来源不可信，请刷新页面后重试。",
    "SESSION_EXPIRED": "登录已超时，请重新登录。",
}

# Messages that say more than the code alone (same error class, a different situation).
SIGN_IN_FAILED = "用户名、密码或动态验证码错误。"
SIGN_IN_LOCKED = "登录失败次数过多，账户或本机已被暂时锁定，请 {seconds} 秒后再试。"
WRONG_PASSWORD = "当前密码错误。"
WEAK_PASSWORD = "新密码至少 12 位，且不能与用户名相同。"

RELATIONSHIPS = {"spouse": "配偶", "parent": "父母", "child": "子女", "sibling": "兄弟姐妹",
                 "grandparent": "祖父母/外祖父母", "grandchild": "孙子女/外孙子女"}
BINDING_STATES = {"pending_review": "待审核", "pending_consent": "待家庭成员确认", "active": "生效",
                  "suspended": "暂停", "unbound": "已解绑", "rejected": "已驳回"}
DELIVERY_STATES = {"pending": "待发送", "sending": "发送中", "sent": "已送达", "failed": "发送失败",
                   "no_consent": "未订阅"}
CHANNELS = {"wechat": "微信", "alipay": "支付宝", "window": "窗口", "system": "系统"}
PROOFS = {"platform_realname": "微信/支付宝实名", "phone": "预留手机号", "window": "窗口核验"}
SCOPES = {"owner": "账户所有人（全部共济）", "binding": "单个绑定", "beneficiary": "家庭成员"}
ROLES = {"window": "窗口经办", "admin": "管理员", "auditor": "审计（只读）"}
INSURANCE = {"employee": "职工医保", "resident": "居民医保"}
PERSON_STATES = {"active": "参保", "inactive": "停保"}
EVENTS = {"created": "创建", "activated": "生效", "pending_review": "待审核", "pending_consent": "待确认",
          "approved": "审核通过", "rejected": "驳回", "unbound": "解绑", "suspended": "暂停",
          "lifted": "恢复", "confirmed": "家庭成员确认", "declined": "家庭成员拒绝", "limit_changed": "限额变更"}
RECORD_KINDS = {"own": "个人账户", "copay": "共济", "refund": "退款"}
NOTICE_KINDS = {"deduction": "扣款通知", "refund": "退款通知", "receipt": "结算回执"}


def error_text(code: str, details: dict[str, Any] | None = None, *, template: str | None = None,
               params: dict[str, Any] | None = None) -> str:
    """The Chinese sentence for an error code, from the same catalogue as the API's messages: the
    error's own message (``template``) when the catalogue knows it, else the code's default text."""
    if code in CONSOLE_ERRORS:
        return CONSOLE_ERRORS[code]
    if template is not None:
        return translate(template, code=code, params=params, locale="zh")
    return message_for(code, "zh")


def label(table: dict[str, str], value: Any) -> str:
    return table.get(value, str(value)) if value is not None else "—"
