"""Proof of identity (R21): link a user to a registry person, and the ``GET /me`` view.

ID numbers are not secrets, so a name and an ID number link nothing on their own. A link needs
one proof the region's ``identity_proof`` accepts:

- ``platform_realname``: WeChat's real-name check (both ``V_OP_NM_MA`` and ``V_NM_ID_MA``) or
  Alipay's certified identity (``is_certified`` = T, name and ``cert_no`` equal to the given ones);
- ``phone``: the user's platform-proven mobile number equals the person's reserved number, and no
  other person reserved that number (families share phones: a shared number proves none of them);
- ``window``: staff linked the user after checking the ID card (``link_at_window``).

The order of the checks keeps the endpoint from telling strangers who is insured: without a proof
(or with one the platform refuses) the answer is ``IDENTITY_NOT_PROVEN`` before the registry is
read; only then does a wrong name or ID number give ``IDENTITY_MISMATCH`` (never saying which).
Platform calls happen outside any database transaction.
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, select, update
from sqlalchemy.orm import Session

from app import errors
from app.platforms import PlatformError
from app.policy import IDENTITY_PROOFS, RegionPolicy, names_match, shanghai_date
from app.security.id_number import validate_id_number
from app.security.pii import PiiCipher, mask_id_number, mask_mobile, mask_name, normalize_for_index
from app.services import audit
from app.services.auth import user_by_token
from app.timefmt import iso
from models import Account, IdentityLinkCode, Person, User, Voucher
from notify.person_notices import add_person_notice

WINDOW_CODE_TTL = timedelta(minutes=10)
WINDOW_CODE_DIGITS = 8
# The request fields of each proof and the policy proof they belong to.
PROOF_FIELDS = {"wechat_realname_code": "platform_realname", "alipay_auth_code": "platform_realname",
                "phone": "phone"}
_HOW = {"platform_realname": "用微信或支付宝实名信息", "phone": "用手机号", "window": "在医保经办窗口"}


@dataclass(frozen=True)
class Platforms:
    """The platform gateways and keys a proof needs (``app.wiring.Domain`` gives them)."""

    wechat: Any
    alipay: Any
    alipay_public_key: str = ""
    alipay_aes_key: bytes | None = None


def accepted_proofs(policy: RegionPolicy, *, but: str | None = None) -> list[str]:
    """The proofs this region accepts, in the API's order (without ``but``, one ruled out)."""
    return [proof for proof in IDENTITY_PROOFS if proof in policy.identity_proof and proof != but]


def not_proven(policy: RegionPolicy, reason: str) -> errors.DomainError:
    """``IDENTITY_NOT_PROVEN`` naming the proofs this region accepts."""
    return errors.IdentityNotProven(details={"reason": reason, "accepted_proofs": accepted_proofs(policy)})


def shared_phone(policy: RegionPolicy) -> errors.DomainError:
    """``IDENTITY_NOT_PROVEN`` for a reserved number another person reserved too: the proofs that
    would still do are the region's others. Neither who else reserved it nor how many is said."""
    return errors.IdentityNotProven(
        "This phone number is reserved for more than one insured person, so it proves none of them; "
        "use the WeChat or Alipay real-name check, or the service window.",
        details={"reason": "reserved_phone_shared", "accepted_proofs": accepted_proofs(policy, but="phone")})


# Another person with the same reserved number: one probe of ix_persons_phone_bidx that stops at
# the first other person found, however many share the number (a test checks the plan).
ANOTHER_RESERVER = (select(Person.id).where(Person.phone_bidx == bindparam("phone_bidx"),
                                            Person.id != bindparam("person_id")).limit(1))


def reserved_by_another(session: Session, phone_bidx: str, person_id: int) -> bool:
    """Whether a person other than ``person_id`` reserved this number (blind index) too (R21)."""
    return session.scalar(ANOTHER_RESERVER, {"phone_bidx": phone_bidx, "person_id": person_id}) is not None


# Lock order of identity changes: the person row, then the user rows (linking here and at the
# window, staff's new reserved number, which ends phone links: app.services.phones, and staff's end
# of one link: app.services.identity_links). Ending a link then updates the user's live vouchers. A
# settlement locks its voucher first and then writes rows naming the holder's person and users (its
# settlement, payments, notices, deliveries), each foreign key checked by PostgreSQL with FOR KEY
# SHARE on that row: so these locks are FOR NO KEY UPDATE (``locked_afresh``), which excludes every
# other identity change but not a key-share — with FOR UPDATE, a clerk ending a link while its code
# is being settled waited on the voucher while the settlement waited on the person (a deadlock).
LOCK_ORDER = ("persons", "users")


def locked_afresh(query: Any) -> Any:
    """``query`` FOR NO KEY UPDATE (LOCK_ORDER), overwriting whatever the session already holds of
    those rows."""
    return query.with_for_update(key_share=True).execution_options(populate_existing=True)


def _proof_kind(proof: dict[str, Any] | None) -> tuple[str, str] | None:
    """(request field, policy proof) of the one proof given, or None."""
    given = [(name, PROOF_FIELDS[name]) for name, value in (proof or {}).items()
             if name in PROOF_FIELDS and value not in (None, "", False)]
    if len(given) != 1:
        return None
    return given[0]


def verify_identity(session: Session, pii: PiiCipher, policy: RegionPolicy, platforms: Platforms, user_id: int,
                    name: str, id_number: str, proof: dict[str, Any] | None, now: datetime,
                    ip: str | None = None) -> dict[str, Any]:
    """Link the user to the registry person with this name and ID number, given a proof (R18, R21)."""
    number = validate_id_number(id_number, today=shanghai_date(now))
    with session.begin():
        user = session.get_one(User, user_id)
        channel, openid, alipay_ids = user.channel, user.wechat_openid, (user.alipay_user_id, user.alipay_open_id)
        phone_bidx = user.phone_bidx
    given = _proof_kind(proof)
    failure: errors.DomainError | None = None
    if given is None:
        failure = not_proven(policy, "no_proof" if not proof else "one_proof_needed")
    elif given[1] not in policy.identity_proof:
        failure = not_proven(policy, "proof_not_accepted_here")
    elif given[0] == "wechat_realname_code":
        failure = _wechat_realname(policy, platforms, channel, openid, name, number, str(proof["wechat_realname_code"]))
    elif given[0] == "alipay_auth_code":
        failure = _alipay_certified(policy, platforms, channel, alipay_ids, name, number,
                                    str(proof["alipay_auth_code"]))
    elif phone_bidx is None:
        failure = not_proven(policy, "phone_not_proven")
    kind = given[1] if given else None
    if failure is not None:
        _audit_failure(session, user_id, kind, failure, now, ip)
        raise failure

    with session.begin():
        # Locked and read afresh, person then user (LOCK_ORDER): the reserved number the phone proof
        # is judged by cannot change under it (staff's update ends such links, R21), and the user is
        # not the one the session still holds from before the platform was asked (a Session.get with
        # FOR UPDATE does not refresh an object it holds) — a link made meanwhile, at the window or
        # by a parallel request, is seen, not overwritten.
        bidx = pii.blind_index(number, kind="id_number")
        person = session.scalar(locked_afresh(select(Person).where(Person.id_number_bidx == bidx)))
        user = session.scalars(locked_afresh(select(User).where(User.id == user_id))).one()
        matched = person is not None and names_match(pii.decrypt(person.name_enc, context="person.name"), name)
        details: dict[str, Any] = {"matched": matched, "proof": kind,
                                   "person_id": person.id if matched and person else None}
        phone_proves = (kind == "phone" and matched and person is not None and user.phone_bidx is not None
                        and person.phone_bidx is not None and hmac.compare_digest(user.phone_bidx, person.phone_bidx))
        if phone_proves and person is not None and person.phone_bidx is not None \
                and reserved_by_another(session, person.phone_bidx, person.id):
            # The number is this person's and someone else's (a family phone): holding it proves
            # neither. Told only to whom name, ID number and number all match — they hold the phone.
            details["why"] = "reserved_phone_shared"
            failed: errors.DomainError | None = shared_phone(policy)
        elif kind == "phone" and not phone_proves:
            # One answer whether the name and ID number are unknown, wrong, or a person's whose reserved
            # number differs or is missing: a proven phone of one's own must not become a way to ask
            # who is insured (the audit row keeps the real reason).
            details["why"] = ("no_match" if not matched or person is None
                              else "phone_differs_from_reserved" if person.phone_bidx else "no_reserved_phone")
            failed = not_proven(policy, "phone_does_not_prove_this_identity")
        elif not matched or person is None:
            failed = errors.IdentityMismatch()
        elif user.person_id is not None and user.person_id != person.id:
            failed = errors.InvalidState("This sign-in is already verified as another person.")
        else:
            failed = None
            link_user(session, user, person, kind or "", now)
        details["result"] = "linked" if failed is None else failed.code
        audit.record(session, actor_kind="user", actor_id=user_id, action="identity.verify", at=now, ip=ip,
                     details=details)
    # The audit row of a failed attempt is committed before the error is raised.
    if failed is not None:
        raise failed
    return {"verified": True, "proof": kind, "person": person_view(pii, person)}


def _wechat_realname(policy: RegionPolicy, platforms: Platforms, channel: str, openid: str | None, name: str,
                     number: str, code: str) -> errors.DomainError | None:
    if channel != "wechat" or not openid:
        return not_proven(policy, "wechat_proof_needs_a_wechat_sign_in")
    try:
        verify_openid, verify_real_name = platforms.wechat.check_real_name(openid, name.strip(), number, code)
    except PlatformError as err:
        if err.transient or err.kind == "token":
            raise errors.UpstreamUnavailable() from err
        return not_proven(policy, "realname_code_invalid")
    if (verify_openid, verify_real_name) != ("V_OP_NM_MA", "V_NM_ID_MA"):
        # V_OP_NA: no WeChat Pay real name; V_OP_NM_UM / V_NM_ID_UM: not this person.
        return not_proven(policy, "platform_says_no")
    return None


def _alipay_certified(policy: RegionPolicy, platforms: Platforms, channel: str, ids: tuple[str | None, str | None],
                      name: str, number: str, auth_code: str) -> errors.DomainError | None:
    if channel != "alipay" or platforms.alipay is None:
        return not_proven(policy, "alipay_proof_needs_an_alipay_sign_in")
    try:
        found = platforms.alipay.certification(auth_code)
    except errors.LoginCodeInvalid:
        return not_proven(policy, "alipay_auth_code_invalid")
    if not ((found.user_id and found.user_id == ids[0]) or (found.open_id and found.open_id == ids[1])):
        return not_proven(policy, "alipay_code_of_another_account")
    if not found.certified or found.cert_type not in (None, "0") or not found.cert_no or not found.name:
        return not_proven(policy, "platform_says_no")
    if normalize_for_index(found.cert_no) != number or not names_match(found.name, name):
        return not_proven(policy, "platform_says_no")
    return None


def _audit_failure(session: Session, user_id: int, kind: str | None, failure: errors.DomainError, now: datetime,
                   ip: str | None) -> None:
    with session.begin():
        audit.record(session, actor_kind="user", actor_id=user_id, action="identity.verify", at=now, ip=ip,
                     details={"matched": None, "proof": kind, "result": failure.code,
                              "reason": failure.details.get("reason")})


def link_user(session: Session, user: User, person: Person, proof: str, now: datetime) -> None:
    """Record the proven link (the caller locked the person row, then the user row: LOCK_ORDER); the
    accounts already linked to the person get an inbox notice that a further account now acts for
    them (R21). The person lock makes two accounts linking at once see each other: the later one
    always finds the earlier and the notice is written."""
    if user.person_id == person.id and user.identity_proof:
        user.identity_proof, user.identity_proven_at = proof, now
        return
    others = session.scalars(select(User.id).where(User.person_id == person.id, User.id != user.id)).all()
    user.person_id = person.id
    user.verified_at = user.verified_at or now
    user.identity_proof, user.identity_proven_at = proof, now
    user.unproven_person_id = None
    if others:
        platform = "微信" if user.channel == "wechat" else "支付宝"
        add_person_notice(session, person_id=person.id, kind="identity", event_key=f"u{user.id}.p{person.id}", at=now,
                          exclude_user_id=user.id, content={"event": "linked", "channel": user.channel, "proof": proof,
                                   "message": f"又一个{platform}账号{_HOW.get(proof, '')}验证了您的身份，"
                                              "可以使用您的医保个人账户。如非本人操作，请立即到医保经办窗口处理。"})


def end_links(session: Session, users: list[User], person_id: int, now: datetime) -> int:
    """End these users' links to the person (the caller locked the person row, then these user rows:
    LOCK_ORDER), as migrations 0003 and 0007 did: ``person_id`` moves to ``unproven_person_id``, the
    proof is cleared, ``GET /me`` shows ``must_prove_identity_again``. Their tokens keep working but
    act on no person. The vouchers they issued and have not used stop working now (one probe of
    ``ix_vouchers_holder_user_id``): a code lives ``VOUCHER_TTL_SECONDS`` and must not spend the
    person's account after the window took the link away. Returns how many codes were ended.

    Used by staff's end of a link (``app.services.identity_links``) and by a new reserved number,
    which ends the phone links the old one made (``app.services.phones``)."""
    for user in users:
        user.unproven_person_id, user.person_id, user.verified_at = person_id, None, None
        user.identity_proof = user.identity_proven_at = None
    if not users:
        return 0
    ended = session.execute(update(Voucher).where(
        Voucher.holder_user_id.in_([user.id for user in users]), Voucher.used_at.is_(None),
        Voucher.expires_at > now).values(expires_at=now).execution_options(synchronize_session=False))
    return int(ended.rowcount or 0)


# --- window proof --------------------------------------------------------------------------


def _code_hash(pii: PiiCipher, code: str) -> str:
    return pii.blind_index(code, kind="identity_link_code")


def _live(code_hash: str, now: datetime) -> tuple[Any, ...]:
    """The link codes with this hash that are unused and unexpired."""
    return (IdentityLinkCode.code_hash == code_hash, IdentityLinkCode.used_at.is_(None),
            IdentityLinkCode.expires_at > now)


def _new_code() -> str:
    return "".join(secrets.choice("0123456789") for _ in range(WINDOW_CODE_DIGITS))


def issue_window_code(session: Session, pii: PiiCipher, user_id: int, now: datetime) -> dict[str, Any]:
    """A short-lived, single-use code the user shows at the window (stored only as a keyed hash).

    A code equal to another user's live code is never handed out (the window would not know whose
    it is): a new one is drawn instead."""
    with session.begin():
        for _ in range(20):
            code = _new_code()
            code_hash = _code_hash(pii, code)
            if session.scalar(select(IdentityLinkCode.id).where(*_live(code_hash, now)).limit(1)) is None:
                break
        else:  # 20 draws in a row among live codes: far more codes are live than 10^8 allows for
            raise errors.RateLimited("Too many link codes are live; try again shortly.")
        session.add(IdentityLinkCode(code_hash=code_hash, user_id=user_id, expires_at=now + WINDOW_CODE_TTL,
                                     created_at=now))
        audit.record(session, actor_kind="user", actor_id=user_id, action="identity.window_code", at=now)
    return {"code": code, "expires_at": iso(now + WINDOW_CODE_TTL),
            "ttl_seconds": int(WINDOW_CODE_TTL.total_seconds())}


def link_at_window(session: Session, pii: PiiCipher, policy: RegionPolicy, staff_id: int, id_number: str,
                   link_code: str, now: datetime, ip: str | None = None) -> dict[str, Any]:
    """Staff checked the ID card; link the user who showed ``link_code`` to that person (R21 window)."""
    if "window" not in policy.identity_proof:
        raise not_proven(policy, "proof_not_accepted_here")
    number = validate_id_number(id_number, today=shanghai_date(now))
    code = (link_code or "").strip()
    with session.begin():
        live = session.scalars(select(IdentityLinkCode).where(*_live(_code_hash(pii, code), now))
                               .order_by(IdentityLinkCode.id.desc()).limit(2).with_for_update()).all()
        # Two live codes alike (issued at the same instant): whose it is cannot be told — link nobody.
        row = live[0] if len(live) == 1 else None
        bidx = pii.blind_index(number, kind="id_number")
        person = session.scalar(locked_afresh(select(Person).where(Person.id_number_bidx == bidx)))
        ok = row is not None and person is not None
        failed: errors.DomainError | None = None
        if row is None:
            failed = errors.NotFound("The link code is unknown, used or expired; ask for a new one.")
        elif person is None:
            failed = errors.NotFound("No such person in the registry.")
        else:
            user = session.scalars(locked_afresh(select(User).where(User.id == row.user_id))).one()
            if user.person_id is not None and user.person_id != person.id:
                failed = errors.InvalidState("This sign-in is already verified as another person.")
            else:
                row.used_at = now
                link_user(session, user, person, "window", now)
        audit.record(session, actor_kind="staff", actor_id=staff_id, action="identity.window_link", at=now, ip=ip,
                     target_kind="user", target_id=row.user_id if row else None,
                     details={"person_id": person.id if person else None, "linked": ok and failed is None,
                              "result": failed.code if failed else "linked"})
    if failed is not None:
        raise failed
    return {"user_id": row.user_id, "proof": "window", "person": person_view(pii, person)}


# --- views ---------------------------------------------------------------------------------


def person_view(pii: PiiCipher, person: Person) -> dict[str, Any]:
    """The masked person, as every response shows it (R17)."""
    return masked_person(pii, person.id, person.name_enc, person.id_number_enc)


def masked_person(pii: PiiCipher, person_id: int, name_enc: str, id_number_enc: str) -> dict[str, Any]:
    """``person_view`` from the columns a Core statement read: only the name and the ID number
    are decrypted, and only to be masked."""
    return {
        "person_id": person_id,
        "name": mask_name(pii.decrypt(name_enc, context="person.name")),
        "id_number": mask_id_number(pii.decrypt(id_number_enc, context="person.id_number")),
    }


_users, _persons, _accounts = User.__table__, Person.__table__, Account.__table__
# GET /me reads everything it shows in its token look-up: ONE statement, built once (issue 13).
# Outer joins: a user not linked to a person has no person, a beneficiary may have no account.
ME_BY_TOKEN = user_by_token(
    _users.c.identity_proof, _users.c.identity_proven_at, _users.c.unproven_person_id,
    _users.c.phone_enc.label("user_phone_enc"), _users.c.phone_bidx.label("user_phone_bidx"),
    _users.c.phone_proof, _users.c.phone_proven_at,
    _persons.c.name_enc, _persons.c.id_number_enc, _persons.c.insurance_type, _persons.c.region_code,
    _persons.c.status, _persons.c.phone_enc.label("person_phone_enc"),
    _persons.c.phone_bidx.label("person_phone_bidx"),
    _accounts.c.id.label("account_id"), _accounts.c.balance_fen,
    join=lambda source: source.outerjoin(_persons, _persons.c.id == _users.c.person_id)
    .outerjoin(_accounts, _accounts.c.person_id == _persons.c.id),
)


def describe_me(pii: PiiCipher, policy: Any, me: Any) -> dict[str, Any]:
    """The signed-in user, their masked person, their balance (owners) and the region policy, from
    the row ``ME_BY_TOKEN`` read with the caller's token (no statement of its own). PII is
    decrypted only for what is shown, masked."""
    result: dict[str, Any] = {
        "user": {"id": me.user_id, "channel": me.channel, "verified": me.person_id is not None,
                 "identity_proof": me.identity_proof, "identity_proven_at": iso(me.identity_proven_at),
                 "must_prove_identity_again": me.unproven_person_id is not None and me.person_id is None,
                 "phone": None if me.user_phone_enc is None else {
                     "number": mask_mobile(pii.decrypt(me.user_phone_enc, context="user.phone")),
                     "proven_via": me.phone_proof, "proven_at": iso(me.phone_proven_at)}},
        "person": None,
        "account": None,
        "policy": policy.summary(),
    }
    if me.person_id is not None:
        result["person"] = masked_person(pii, me.person_id, me.name_enc, me.id_number_enc) | {
            "insurance_type": me.insurance_type,
            "region_code": me.region_code,
            "status": me.status,
            "reserved_phone": None if me.person_phone_enc is None
            else mask_mobile(pii.decrypt(me.person_phone_enc, context="person.phone")),
            "phone_matches_reserved": None if me.person_phone_bidx is None or me.user_phone_bidx is None
            else hmac.compare_digest(me.person_phone_bidx, me.user_phone_bidx),
        }
        if me.account_id is not None:
            result["account"] = {"balance_fen": me.balance_fen}
    return result
