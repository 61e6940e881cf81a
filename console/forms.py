"""The console's forms (Flask-WTF: every form carries the session's CSRF token)."""

from __future__ import annotations

from flask_wtf import FlaskForm
from flask_wtf.file import FileField
from wtforms import (
    BooleanField,
    DateField,
    IntegerField,
    PasswordField,
    SelectChoice,
    SelectField,
    StringField,
    TextAreaField,
)
from wtforms.validators import DataRequired, InputRequired, Length, NumberRange, Optional

from console.messages import RELATIONSHIPS

REQUIRED = "必填"


class SignInForm(FlaskForm):
    username = StringField("用户名", validators=[DataRequired(REQUIRED), Length(max=64)])
    password = PasswordField("密码", validators=[DataRequired(REQUIRED), Length(max=256)])
    code = StringField("动态验证码", validators=[DataRequired(REQUIRED), Length(min=6, max=6, message="6 位数字")])


class ReasonForm(FlaskForm):
    reason = TextAreaField("原因", validators=[Optional(), Length(max=500)])


class RequiredReasonForm(FlaskForm):
    reason = TextAreaField("原因", validators=[DataRequired(REQUIRED), Length(max=500)])


class LookupForm(FlaskForm):
    id_number = StringField("身份证号码", validators=[DataRequired(REQUIRED), Length(max=32)])


class WindowBindingForm(FlaskForm):
    owner_id_number = StringField("账户所有人身份证号码", validators=[DataRequired(REQUIRED), Length(max=32)])
    beneficiary_name = StringField("家庭成员姓名", validators=[DataRequired(REQUIRED), Length(max=64)])
    beneficiary_id_number = StringField("家庭成员身份证号码", validators=[DataRequired(REQUIRED), Length(max=32)])
    beneficiary_card_no = StringField("家庭成员社保卡号", validators=[DataRequired(REQUIRED), Length(max=32)])
    relationship = SelectField("家庭成员是账户所有人的",
                               choices=[SelectChoice(value, label) for value, label in RELATIONSHIPS.items()])
    proofs_checked = BooleanField("已核验纸质关系证明材料原件", validators=[InputRequired("须核验纸质材料")])
    pledge_signed = BooleanField("账户所有人已在窗口阅读并签署承诺书", validators=[InputRequired("须签署承诺书")])
    scan = FileField("材料扫描件（可选，JPEG/PNG/PDF，≤5 MB）")


class SuspendForm(FlaskForm):
    scope = SelectField("暂停范围", choices=[
        SelectChoice("owner", "账户所有人（其全部共济）"),
        SelectChoice("beneficiary", "家庭成员"), SelectChoice("binding", "单个绑定")])
    id_number = StringField("身份证号码（账户所有人或家庭成员）", validators=[Optional(), Length(max=32)])
    binding_id = IntegerField("绑定编号（单个绑定）", validators=[Optional(), NumberRange(min=1)])
    # R11 + R16: only the person suspended reads the reason (both parties for a single binding).
    reason = TextAreaField("原因（仅被暂停的本人可见，暂停单个绑定时双方可见；如：套现、倒卖药品）",
                           validators=[DataRequired(REQUIRED), Length(max=500)])


class FilingForm(FlaskForm):
    id_number = StringField("身份证号码", validators=[DataRequired(REQUIRED), Length(max=32)])
    region_prefix = StringField("就医地（2 位省或 4 位地市代码）", validators=[DataRequired(REQUIRED), Length(max=4)])
    valid_from = DateField("开始日期", validators=[DataRequired(REQUIRED)])
    valid_to = DateField("结束日期", validators=[DataRequired(REQUIRED)])
    reason = TextAreaField("备注", validators=[Optional(), Length(max=500)])


class CertificationForm(FlaskForm):
    id_number = StringField("身份证号码", validators=[DataRequired(REQUIRED), Length(max=32)])
    disease_code = StringField("病种代码", validators=[DataRequired(REQUIRED), Length(max=32)])
    valid_from = DateField("开始日期", validators=[DataRequired(REQUIRED)])
    valid_to = DateField("结束日期", validators=[DataRequired(REQUIRED)])
    reason = TextAreaField("备注", validators=[Optional(), Length(max=500)])


class PhoneForm(FlaskForm):
    id_number = StringField("身份证号码（已核验身份证原件）", validators=[DataRequired(REQUIRED), Length(max=32)])
    phone = StringField("新的预留手机号", validators=[DataRequired(REQUIRED), Length(max=20)])


class IdentityLinkForm(FlaskForm):
    id_number = StringField("身份证号码（已核验身份证原件）", validators=[DataRequired(REQUIRED), Length(max=32)])
    link_code = StringField("小程序显示的窗口核验码", validators=[DataRequired(REQUIRED), Length(max=16)])


class EndLinkForm(FlaskForm):
    reason = TextAreaField("解除原因（已核验参保人身份证原件）", validators=[DataRequired(REQUIRED), Length(max=500)])
    confirmed = BooleanField("确认解除：该账号将不能再使用此参保人的医保个人账户，须重新验证身份",
                             validators=[InputRequired("须勾选确认")])


class PasswordForm(FlaskForm):
    current_password = PasswordField("当前密码", validators=[DataRequired(REQUIRED)])
    new_password = PasswordField("新密码（至少 12 位）", validators=[DataRequired(REQUIRED), Length(max=256)])


class TotpForm(FlaskForm):
    password = PasswordField("当前密码", validators=[DataRequired(REQUIRED)])
    code = StringField("新动态验证码", validators=[DataRequired(REQUIRED), Length(min=6, max=6)])
