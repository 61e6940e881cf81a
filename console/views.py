"""The console's pages. Each view: a form in, one service call (the same as staff_api's), a page out."""

from __future__ import annotations

from typing import Any

import segno
from flask import Blueprint, abort, current_app, g, redirect, render_template, request, send_file, session, url_for
from markupsafe import Markup
from wtforms import SelectChoice

from app import errors
from app.services import (
    authorizations,
    bindings,
    console_auth,
    documents,
    filings,
    identity,
    identity_links,
    overview,
    person_lookup,
    phones,
    suspensions,
)
from app.web import read_session
from app.web import session as db_session
from console import charts, messages
from console.forms import (
    CertificationForm,
    EndLinkForm,
    FilingForm,
    IdentityLinkForm,
    LookupForm,
    PasswordForm,
    PhoneForm,
    ReasonForm,
    RequiredReasonForm,
    SignInForm,
    SuspendForm,
    TotpForm,
    WindowBindingForm,
)
from console.web import ADMIN, ALL, WRITE, attempt, client_ip, domain, install, now, render_error, roles, user
from notify import inbox

TOTP_PENDING = "console.totp_pending"
bp = Blueprint("console", __name__, template_folder="templates", static_folder="static",
               static_url_path="/static")
install(bp)


def _reader() -> Any:
    """The session for a page's plain record reads, as staff_api reads them: ``read_session()`` (the
    replica when DATABASE_REPLICA_URL is set and it is safe) on a GET; the primary when this request
    itself may just have written (a POST showing the page again), so the page shows that write.
    Audit-logged look-ups (参保人查询) and every write always use the primary."""
    return read_session() if request.method in ("GET", "HEAD") else db_session()


# --- sign-in ----------------------------------------------------------------------------------------


@bp.route("/login", methods=["GET", "POST"])
def sign_in() -> Any:
    """Username, password and TOTP code; on success a fresh session (and CSRF secret)."""
    form = SignInForm()
    error = "登录已超时，请重新登录。" if request.args.get("expired") else None
    if form.validate_on_submit():
        try:
            token = console_auth.sign_in(db_session(), domain().pii, username=form.username.data,
                                         password=form.password.data, code=form.code.data.strip(),
                                         ip=client_ip(), now=now())
        except errors.SignInLocked as err:
            error = messages.SIGN_IN_LOCKED.format(seconds=err.details["retry_after"])
        except errors.SignInFailed:
            error = messages.SIGN_IN_FAILED
        else:
            # A session this browser still held (the clerk before, on a shared PC) ends for good;
            # a new CSRF secret for the new session: nothing carries over from before.
            console_auth.sign_out(db_session(), session.get("sid"), now=now(), ip=client_ip())
            session.clear()
            session["sid"] = token
            return redirect(url_for("console.home"), 303)
    elif request.method == "POST":
        error = "请填写用户名、密码和 6 位动态验证码。"
    return render_template("console/login.html", form=form, error=error), 200 if error is None else 401


@bp.post("/logout")
def sign_out() -> Any:
    """End the session for good."""
    console_auth.sign_out(db_session(), session.get("sid"), now=now(), ip=client_ip())
    session.clear()
    return redirect(url_for("console.sign_in"), 303)


@bp.route("/account", methods=["GET", "POST"])
def account() -> Any:
    """Change one's password (other sessions end)."""
    form, done, error = PasswordForm(), False, None
    if form.validate_on_submit():
        try:
            session["sid"] = console_auth.change_password(
                db_session(), user=user(), current_password=form.current_password.data,
                new_password=form.new_password.data, now=now(), ip=client_ip())
            done = True
        except errors.SignInFailed:
            error = messages.WRONG_PASSWORD
        except errors.ValidationFailed:
            error = messages.WEAK_PASSWORD
    return render_template("console/account.html", form=form, done=done, error=error, totp_form=None)


@bp.route("/account/totp", methods=["GET", "POST"])
def totp() -> Any:
    """Enrol a new TOTP secret: the otpauth QR (segno, inline SVG), confirmed by password and a code."""
    form, done, error = TotpForm(), False, None
    pii = domain().pii
    if "totp_pending" not in session:  # the same QR until it is confirmed (a reload must not change it)
        # Kept encrypted: Flask's session cookie is signed, not secret.
        session["totp_pending"] = pii.encrypt(console_auth.new_totp_secret(), context=TOTP_PENDING)
    secret = pii.decrypt(session["totp_pending"], context=TOTP_PENDING)
    if form.validate_on_submit():
        token, error = attempt(lambda: console_auth.enrol_totp(
            db_session(), domain().pii, user=user(), password=form.password.data, secret=secret,
            code=form.code.data.strip(), now=now(), ip=client_ip()))
        if token is not None:
            done = True
            session["sid"] = token  # a new session id with the new second factor (console_auth._rotate_session)
            session.pop("totp_pending", None)
        else:
            error = "密码或动态验证码错误。"
    uri = console_auth.provisioning_uri(secret, user().username)
    return render_template("console/totp.html", form=form, done=done, error=error, secret=secret,
                           qr=Markup(segno.make(uri, error="m").svg_inline(scale=4)))  # noqa: S704 — segno's SVG


# --- overview ---------------------------------------------------------------------------------------


@bp.get("/")
@roles(*ALL)
def home() -> Any:
    """概览: pending reviews, settlements, co-pay, refunds, notices, with SVG charts."""
    data = overview.overview(read_session(), now=now())
    days = [d["day"] for d in data["days"]]
    notices = data["notices"]
    return render_template(
        "console/overview.html", data=data,
        chart_settlements=charts.bar_chart(days, [d["settlements"] for d in data["days"]], title="每日结算笔数",
                                           unit=" 笔"),
        chart_copay=charts.bar_chart(days, [d["copay_fen"] for d in data["days"]], title="每日共济金额",
                                     unit=" 元", money=True),
        chart_refunds=charts.bar_chart(days, [d["refund_fen"] for d in data["days"]], title="每日退款金额",
                                       unit=" 元", money=True),
        chart_notices=charts.split_bar([("已送达", notices["sent"], "ok"), ("发送失败", notices["failed"], "bad"),
                                        ("未订阅", notices["no_consent"], "warn"),
                                        ("待发送", notices["pending"] + notices["sending"], "wait")]),
    )


# --- review queue and bindings ----------------------------------------------------------------------


@bp.get("/reviews")
@roles(*ALL)
def reviews() -> Any:
    """待审核: online bindings waiting for staff review."""
    page = bindings.list_bindings(db_session(), pii=domain().pii, caller=user().principal, status="pending_review",
                                  cursor=request.args.get("cursor") or None, now=now())
    return render_template("console/reviews.html", page=page)


def _binding_page(binding_id: int, error: str | None = None, status: int = 200) -> Any:
    caller = user().principal
    reader = _reader()
    binding = bindings.get_binding(reader, pii=domain().pii, caller=caller, binding_id=binding_id)
    pledge, _missing = attempt(lambda: bindings.get_pledge(db_session(), signer=domain().pledge_signer, caller=caller,
                                                           binding_id=binding_id, now=now(), ip=client_ip()))
    records = authorizations.list_binding_records_for_staff(reader, binding_id=binding_id)
    return render_template("console/binding.html", b=binding, pledge=pledge, records=records["items"],
                           form=ReasonForm(), reject_form=RequiredReasonForm(), error=error), status


@bp.get("/bindings/<int:binding_id>")
@roles(*ALL)
def binding(binding_id: int) -> Any:
    """One binding: parties (masked), proof documents inline, the pledge and its verification, actions."""
    return _binding_page(binding_id)


def _binding_action(binding_id: int, action: Any, form: Any) -> Any:
    if not form.validate_on_submit():
        return _binding_page(binding_id, "请填写原因。", 400)
    _result, error = attempt(lambda: action(reason=form.reason.data))
    if error:
        return _binding_page(binding_id, error, 422)
    return redirect(url_for("console.binding", binding_id=binding_id), 303)


@bp.post("/bindings/<int:binding_id>/approve")
@roles(*WRITE)
def approve(binding_id: int) -> Any:
    """Approve after checking the proofs (R5)."""
    d = domain()
    return _binding_action(binding_id, lambda reason: bindings.approve_binding(
        db_session(), pii=d.pii, policy=d.policy, caller=user().principal, binding_id=binding_id, reason=reason,
        now=now(), ip=client_ip()), ReasonForm())


@bp.post("/bindings/<int:binding_id>/reject")
@roles(*WRITE)
def reject(binding_id: int) -> Any:
    """Reject with the reason the owner will read (R5)."""
    return _binding_action(binding_id, lambda reason: bindings.reject_binding(
        db_session(), pii=domain().pii, caller=user().principal, binding_id=binding_id, reason=reason, now=now(),
        ip=client_ip()), RequiredReasonForm())


@bp.post("/bindings/<int:binding_id>/unbind")
@roles(*WRITE)
def unbind(binding_id: int) -> Any:
    """解绑 at the window (R5): from now on the binding pays nothing."""
    return _binding_action(binding_id, lambda reason: bindings.unbind_member(
        db_session(), pii=domain().pii, caller=user().principal, binding_id=binding_id, reason=reason, now=now(),
        ip=client_ip()), RequiredReasonForm())


@bp.get("/documents/<int:document_id>")
@roles(*ALL)
def document(document_id: int) -> Any:
    """A proof document, shown inline in the binding page (staff may read every one; audit-logged)."""
    stored = documents.open_document(db_session(), current_app.config["DOCUMENT_DIR"], user().principal,
                                     document_id, now(), client_ip())
    # Framed by our own binding page (PDFs), by nobody else: console.web.DOCUMENT_CSP.
    return send_file(stored.path, mimetype=stored.content_type, download_name=stored.download_name,
                     as_attachment=False, max_age=0)


# --- window binding and the certificate --------------------------------------------------------------


@bp.route("/window-binding", methods=["GET", "POST"])
@roles(*WRITE)
def window_binding() -> Any:
    """窗口绑定: paper proofs checked, the owner signs the pledge at the window → an active binding."""
    form, error = WindowBindingForm(), None
    pledge = domain().pledges.current()
    # Only the relationships this region's policy allows (R3) are offered.
    form.relationship.choices = [SelectChoice(value, label) for value, label in messages.RELATIONSHIPS.items()
                                 if value in domain().policy.relationships]
    if form.validate_on_submit():
        created, error = attempt(lambda: _bind_at_window(form, pledge))
        if created is not None:
            return redirect(url_for("console.certificate", binding_id=created["id"]), 303)
    elif request.method == "POST":
        error = "请完整填写表单，并确认已核验材料、已签署承诺书。"
    # ID numbers typed in are never sent back in the page (R17): the clerk types them again.
    for field in (form.owner_id_number, form.beneficiary_id_number, form.beneficiary_card_no):
        field.data = ""
    return render_template("console/window_binding.html", form=form, error=error, pledge=pledge), (
        200 if error is None else 422)


def _bind_at_window(form: WindowBindingForm, pledge: Any) -> dict[str, Any]:
    d, caller = domain(), user().principal
    document_ids = []
    if form.scan.data and form.scan.data.filename:
        view, _new = documents.upload_document(db_session(), current_app.config["DOCUMENT_DIR"],
                                               current_app.config["MAX_DOCUMENT_BYTES"], caller, form.scan.data.stream,
                                               now(), client_ip())
        document_ids.append(view["id"])
    return bindings.bind_member_at_window(
        db_session(), pii=d.pii, policy=d.policy, pledges=d.pledges, signer=d.pledge_signer, caller=caller,
        owner_id_number=form.owner_id_number.data.strip(),
        beneficiary={"name": form.beneficiary_name.data.strip(), "id_number": form.beneficiary_id_number.data.strip(),
                     "social_card_no": form.beneficiary_card_no.data.strip()},
        relationship=form.relationship.data, proof_document_ids=document_ids,
        pledge={"version": pledge.version, "sha256": pledge.sha256, "agreed": bool(form.pledge_signed.data)},
        now=now(), ip=client_ip())


@bp.get("/bindings/<int:binding_id>/certificate")
@roles(*ALL)
def certificate(binding_id: int) -> Any:
    """绑定凭证: a page for printing — parties masked, relationship, effective time, attestation, QR."""
    caller = user().principal
    binding = bindings.get_binding(db_session(), pii=domain().pii, caller=caller, binding_id=binding_id)
    pledge = bindings.get_pledge(db_session(), signer=domain().pledge_signer, caller=caller, binding_id=binding_id,
                                 now=now(), ip=client_ip())
    link = url_for("console.attestation", binding_id=binding_id, _external=True)
    return render_template("console/certificate.html", b=binding, pledge=pledge, link=link,
                           qr=Markup(segno.make(link, error="m").svg_inline(scale=3)))  # noqa: S704


@bp.get("/attestations/<int:binding_id>")
@roles(*ALL)
def attestation(binding_id: int) -> Any:
    """Where the certificate's QR points: the attestation verified now (R4)."""
    caller = user().principal
    pledge = bindings.get_pledge(db_session(), signer=domain().pledge_signer, caller=caller, binding_id=binding_id,
                                 now=now(), ip=client_ip())
    binding = bindings.get_binding(db_session(), pii=domain().pii, caller=caller, binding_id=binding_id)
    return render_template("console/attestation.html", b=binding, pledge=pledge)


# --- person look-up ----------------------------------------------------------------------------------


@bp.route("/persons", methods=["GET", "POST"])
@roles(*ALL)
def persons() -> Any:
    """参保人查询 by ID number (POST: the number stays out of URLs and logs; never shown back)."""
    form, result, error = LookupForm(), None, None
    if form.validate_on_submit():
        d = domain()
        result, error = attempt(lambda: person_lookup.look_up_person(
            db_session(), pii=d.pii, policy=d.policy, caller=user().principal, id_number=form.id_number.data.strip(),
            now=now(), ip=client_ip()))
    form.id_number.data = ""
    return render_template("console/persons.html", form=form, r=result, error=error, end_form=EndLinkForm(),
                           ended=_int(request.args.get("ended"))), 200 if error is None else 422


@bp.post("/identity-links/<int:user_id>/end")
@roles(*WRITE)
def end_identity_link(user_id: int) -> Any:
    """解除关联 (R21): end the link of a sign-in listed on the person page, with a reason and a confirmation;
    the same service as ``POST /api/v1/staff/identity-links/{user_id}/end``. The page then says so (the
    person is looked up again by ID number: it is never carried in a URL)."""
    form = EndLinkForm()
    if not form.validate_on_submit():
        error, status = "请填写解除原因并勾选确认。", 400
    else:
        _ended, error = attempt(lambda: identity_links.end_link(
            db_session(), domain().pii, user().principal, user_id, form.reason.data, now(), client_ip()))
        status = 422
    if error:
        return render_template("console/persons.html", form=LookupForm(), r=None, error=error, end_form=form,
                               ended=None), status
    return redirect(url_for("console.persons", ended=user_id), 303)


# --- reserved phone numbers and window identity links (R21) ------------------------------------------


@bp.route("/persons/phone", methods=["GET", "POST"])
@roles(*WRITE)
def person_phone() -> Any:
    """预留手机号: update a person's reserved mobile number after checking the ID card (audited)."""
    form, updated, error = PhoneForm(), None, None
    if form.validate_on_submit():
        updated, error = attempt(lambda: phones.set_reserved_phone(
            db_session(), domain().pii, user().id, form.id_number.data.strip(), form.phone.data, now(), client_ip()))
    elif request.method == "POST":
        error = "请填写身份证号码和手机号。"
    # Neither the ID number nor the full phone number is sent back (R17): the page shows them masked.
    form.id_number.data = form.phone.data = ""
    return render_template("console/person_phone.html", form=form, updated=updated, error=error), (
        200 if error is None else 422)


@bp.route("/identity-links", methods=["GET", "POST"])
@roles(*WRITE)
def identity_link() -> Any:
    """窗口实名核验: link the mini-program user who shows a window code to the checked person (R21)."""
    form, linked, error = IdentityLinkForm(), None, None
    if form.validate_on_submit():
        d = domain()
        linked, error = attempt(lambda: identity.link_at_window(
            db_session(), d.pii, d.policy, user().id, form.id_number.data.strip(), form.link_code.data, now(),
            client_ip()))
    elif request.method == "POST":
        error = "请填写身份证号码和窗口核验码。"
    form.id_number.data = form.link_code.data = ""
    return render_template("console/identity_link.html", form=form, linked=linked, error=error), (
        200 if error is None else 422)


# --- suspensions -------------------------------------------------------------------------------------


@bp.route("/suspensions", methods=["GET", "POST"])
@roles(*ALL)
def suspensions_page() -> Any:
    """暂停/恢复: suspensions in force and the admin's form to add one (R11)."""
    form, error, created = SuspendForm(), None, None
    if request.method == "POST":
        if user().role not in ADMIN:
            abort(403)
        if form.validate_on_submit():
            target = _suspension_target(form)
            created, error = attempt(lambda: suspensions.suspend_copay(
                db_session(), pii=domain().pii, caller=user().principal, reason=form.reason.data, now=now(),
                ip=client_ip(), **target))
        else:
            error = "请选择范围并填写原因。"
    form.id_number.data = ""
    reader = _reader()
    active = suspensions.list_suspensions(reader, pii=domain().pii, active=True, limit=100)
    lifted = suspensions.list_suspensions(reader, pii=domain().pii, active=False, limit=20)
    return render_template("console/suspensions.html", form=form, error=error, created=created,
                           active=active["items"], lifted=lifted["items"], lift_form=ReasonForm()), (
        200 if error is None else 422)


def _suspension_target(form: SuspendForm) -> dict[str, Any]:
    if form.scope.data == "binding":
        return {"binding_id": form.binding_id.data if form.binding_id.data else -1}
    number = (form.id_number.data or "").strip()
    return {f"{form.scope.data}_id_number": number}


@bp.post("/suspensions/<int:suspension_id>/lift")
@roles(*ADMIN)
def lift(suspension_id: int) -> Any:
    """Lift a suspension (R11); the page shows the resulting state."""
    form = ReasonForm()
    form.validate_on_submit()
    _result, error = attempt(lambda: suspensions.lift_suspension(
        db_session(), pii=domain().pii, caller=user().principal, suspension_id=suspension_id,
        reason=form.reason.data, now=now(), ip=client_ip()))
    if error:
        return render_template("console/error.html", message=error, code="LIFT"), 409
    return redirect(url_for("console.suspensions_page", lifted=suspension_id), 303)


# --- filings and certifications ----------------------------------------------------------------------


@bp.route("/filings", methods=["GET", "POST"])
@roles(*ALL)
def filings_page() -> Any:
    """异地备案 (R10): the form and the filing it created."""
    form, created, error = FilingForm(), None, None
    if request.method == "POST":
        if user().role not in WRITE:
            abort(403)
        if form.validate_on_submit():
            created, error = attempt(lambda: filings.file_offsite(
                db_session(), domain().pii, user().id, form.id_number.data.strip(), form.region_prefix.data.strip(),
                form.valid_from.data, form.valid_to.data, now(), client_ip(), reason=form.reason.data))
        else:
            error = "请完整填写表单（日期格式 YYYY-MM-DD）。"
    form.id_number.data = ""
    return render_template("console/filings.html", form=form, created=created, error=error), (
        200 if error is None else 422)


@bp.route("/certifications", methods=["GET", "POST"])
@roles(*ALL)
def certifications_page() -> Any:
    """慢性病认定 (R8): the form and the certification it created."""
    form, created, error = CertificationForm(), None, None
    if request.method == "POST":
        if user().role not in WRITE:
            abort(403)
        if form.validate_on_submit():
            created, error = attempt(lambda: filings.certify_chronic(
                db_session(), domain().pii, user().id, form.id_number.data.strip(), form.disease_code.data.strip(),
                form.valid_from.data, form.valid_to.data, now(), client_ip(), reason=form.reason.data))
        else:
            error = "请完整填写表单（日期格式 YYYY-MM-DD）。"
    form.id_number.data = ""
    return render_template("console/certifications.html", form=form, created=created, error=error), (
        200 if error is None else 422)


# --- notice deliveries -------------------------------------------------------------------------------

ATTENTION_STATES = ("failed", "no_consent")


@bp.get("/deliveries")
@roles(*ALL)
def deliveries() -> Any:
    """通知投递: failed (including outcome_unknown) and no-consent pushes, with resend."""
    state = request.args.get("state") or "failed"
    if state not in ATTENTION_STATES + ("sent", "pending"):
        state = "failed"
    page = inbox.list_deliveries(read_session(), state=state, channel=None, settlement_no=None,
                                 cursor=request.args.get("cursor") or None, limit=50)
    return render_template("console/deliveries.html", page=page, state=state, form=RequiredReasonForm(),
                           resent=request.args.get("resent"))


@bp.post("/deliveries/<int:delivery_id>/resend")
@roles(*WRITE)
def resend(delivery_id: int) -> Any:
    """Push a notice again (audit-logged), after e.g. checking an unknown outcome with the owner."""
    form = RequiredReasonForm()
    if not form.validate_on_submit():
        return render_error("VALIDATION_ERROR", 400)
    inbox.retry_delivery(db_session(), domain().notifier, user().id, delivery_id, form.reason.data, now(),
                         client_ip(), g.get("request_id"))
    return redirect(url_for("console.deliveries", state=request.args.get("state") or "failed", resent=delivery_id),
                    303)


# --- audit log ---------------------------------------------------------------------------------------


@bp.get("/audit")
@roles("admin", "auditor")  # as the staff API: window staff do not read the audit log
def audit_log() -> Any:
    """审计日志 with filters (actor, action, dates) and keyset paging."""
    args = request.args
    filters = {"action": args.get("action") or None, "actor_kind": args.get("actor_kind") or None,
               "actor_id": _int(args.get("actor_id")), "since": args.get("since") or None,
               "until": args.get("until") or None}
    page, error = attempt(lambda: authorizations.list_audit_log(
        read_session(), cursor=args.get("cursor") or None, limit=50, **filters))
    shown = {key: value for key, value in filters.items() if value is not None}
    return render_template("console/audit.html", page=page, filters=filters, shown_filters=shown, error=error), (
        200 if error is None else 400)


def _int(value: str | None) -> int | None:
    return int(value) if value and value.isascii() and value.isdigit() and len(value) < 18 else None


@bp.route("/<path:_anything>")
def not_found(_anything: str) -> Any:
    """Unknown console addresses get the console's Chinese 404 page, not the API's JSON."""
    abort(404)
