"""Chinese texts of the console: error codes, states, relationships.

The one place where an error code becomes the sentence a window clerk reads. Issue 10 builds a
gettext catalogue of the error messages; when it lands, ``error_text`` is the one function to point
at it (the codes are the SPEC §5 codes, unchanged).
"""

from __future__ import annotations

from typing import Any

ERRORS = {
    "VALIDATION_ERROR": "输入有误，请检查后重试。",
    "UNAUTHENTICATED": "请先登录。",
    "FORBIDDEN": "您的角色无权进行此操作。",
    "NOT_FOUND": "未找到相应记录。",
    "INVALID_STATE": "当前状态下不能进行此操作。",
    "IDEMPOTENCY_CONFLICT": "编号重复且内容不同。",
    "PAYLOAD_TOO_LARGE": "文件过大（不超过 5 MB）。",
    "UNSUPPORTED_MEDIA_TYPE": "仅支持 JPEG、PNG 或 PDF 文件。",
    "RATE_LIMITED": "操作过于频繁，请稍后再试。",
    "UPSTREAM_UNAVAILABLE": "平台暂时无法连接，请稍后再试。",
    "ID_NUMBER_INVALID": "身份证号码无效（请核对18位号码及校验位）。",
    "IDENTITY_MISMATCH": "姓名与身份证号码不一致。",
    "OWNER_NOT_ELIGIBLE": "该参保人不能作为共济账户所有人（须为本省在职职工医保参保人且有个人账户）。",
    "BENEFICIARY_MISMATCH": "家庭成员的姓名、身份证号码、社保卡号与参保登记信息不一致。",
    "BENEFICIARY_NOT_ELIGIBLE": "该家庭成员不在可共济范围内（未参保、已停保或不在本省）。",
    "SELF_BINDING": "不能绑定本人。",
    "ALREADY_BOUND": "该家庭成员已与此账户绑定。",
    "TOO_MANY_BINDINGS": "已达到可绑定家庭成员人数上限。",
    "RELATIONSHIP_NOT_ALLOWED": "本统筹区不允许此亲属关系共济。",
    "PROOF_REQUIRED": "需要关系证明材料。",
    "PLEDGE_INVALID": "承诺书版本不是最新版本，或未确认同意。",
    "BINDING_NOT_ACTIVE": "该绑定关系未生效。",
    "LIMIT_ABOVE_CAP": "限额超过本统筹区年度共济上限。",
    "IDENTITY_NOT_PROVEN": "身份未经核验。",
    "PHONE_MISMATCH": "手机号与预留手机号不一致。",
    "PHONE_NOT_VERIFIED": "手机号未经验证。",
    "CARD_INVALID": "社保卡无效。",
    "LOGIN_CODE_INVALID": "登录凭证无效或已使用。",
    "VOUCHER_INVALID": "医保电子凭证无效。",
    "VOUCHER_EXPIRED": "医保电子凭证已过期，请刷新后重试。",
    "VOUCHER_USED": "医保电子凭证已使用。",
    "REFUND_EXCEEDS_PAID": "退款金额超过可退金额。",
    "SERVICE_TIME_OUT_OF_RANGE": "就诊时间超出可结算的时间范围。",
    "INSTITUTION_NOT_DESIGNATED": "该机构不是定点医药机构或已停用。",
    "SIGNATURE_INVALID": "请求签名无效。",
    "TIMESTAMP_OUT_OF_WINDOW": "请求时间戳超出允许范围。",
    "NONCE_REUSED": "请求随机数已被使用。",
    "CSRF": "页面已过期或来源不可信，请刷新页面后重试。",
    "SESSION_EXPIRED": "登录已超时，请重新登录。",
    "INTERNAL_ERROR": "系统出错，请稍后再试。",
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
SCOPES = {"owner": "账户所有人（全部共济）", "binding": "单个绑定", "beneficiary": "家庭成员"}
ROLES = {"window": "窗口经办", "admin": "管理员", "auditor": "审计（只读）"}
INSURANCE = {"employee": "职工医保", "resident": "居民医保"}
PERSON_STATES = {"active": "参保", "inactive": "停保"}
EVENTS = {"created": "创建", "activated": "生效", "pending_review": "待审核", "pending_consent": "待确认",
          "approved": "审核通过", "rejected": "驳回", "unbound": "解绑", "suspended": "暂停",
          "lifted": "恢复", "confirmed": "家庭成员确认", "declined": "家庭成员拒绝", "limit_changed": "限额变更"}
RECORD_KINDS = {"own": "个人账户", "copay": "共济", "refund": "退款"}
NOTICE_KINDS = {"deduction": "扣款通知", "refund": "退款通知", "receipt": "结算回执"}


def error_text(code: str, details: dict[str, Any] | None = None) -> str:
    """The Chinese sentence for an error code (SPEC §5)."""
    return ERRORS.get(code, ERRORS["INTERNAL_ERROR"])


def label(table: dict[str, str], value: Any) -> str:
    return table.get(value, str(value)) if value is not None else "—"
