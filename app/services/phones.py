"""Phone numbers (R21): the platform-proven number of a user, the reserved number of a registry
person, and the consistency check an online binding needs where ``phone_check = "required"``.

A user proves a number through the platform only: WeChat's phone button gives a single-use code
the server exchanges (getuserphonenumber); Alipay's ``my.getPhoneNumber`` gives a response the
server verifies (RSA2, Alipay's public key) and decrypts (``ALIPAY_AES_KEY``). Each proof is used
once (its digest is unique in ``phone_proofs``), so a captured Alipay response cannot be replayed
by another user. Numbers are stored encrypted with a blind index and shown masked (``138****1234``).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app import errors
from app.platforms import PlatformError
from app.platforms.alipay import PhoneResponseInvalid, open_phone_response
from app.policy import RegionPolicy, shanghai_date
from app.security.id_number import validate_id_number
from app.security.pii import PiiCipher, mask_mobile
from app.services import audit
from app.services.identity import Platforms, end_links, locked_afresh, person_view, reserved_by_another
from app.timefmt import iso
from models import Person, PhoneProof, User
from notify.person_notices import add_person_notice

# Mainland mobile numbers: 11 digits starting 13–19 (as the registry's 预留手机号 is written).
MAINLAND_MOBILE = re.compile(r"1[3-9][0-9]{9}")


def normalize_mobile(value: Any) -> str | None:
    """A mainland mobile number without spaces, dashes or the +86 prefix; None if it is not one."""
    if not isinstance(value, str):
        return None
    text = re.sub(r"[\s-]", "", value)
    for prefix in ("+86", "0086"):
        if text.startswith(prefix):
            text = text[len(prefix):]
    return text if MAINLAND_MOBILE.fullmatch(text) else None


def phone_index(pii: PiiCipher, number: str) -> str:
    return pii.blind_index(number, kind="mobile")


def encrypt_person_phone(pii: PiiCipher, number: str) -> tuple[str, str]:
    """(phone_enc, phone_bidx) of a reserved number."""
    return pii.encrypt(number, context="person.phone"), phone_index(pii, number)


def prove_phone(session: Session, pii: PiiCipher, platforms: Platforms, user_id: int, body: dict[str, Any],
                now: datetime, ip: str | None = None) -> dict[str, Any]:
    """Record the number the platform proves for this user (``{wechat_code}`` or ``{alipay_response}``)."""
    with session.begin():
        user = session.get_one(User, user_id)
        channel, openid = user.channel, user.wechat_openid
    given = [k for k in ("wechat_code", "alipay_response") if body.get(k)]
    if len(given) != 1:
        raise errors.ValidationFailed("Give exactly one of wechat_code and alipay_response.",
                                      details={"fields": ["wechat_code", "alipay_response"]})
    if given[0] == "wechat_code":
        if channel != "wechat":
            raise errors.PhoneNotVerified(details={"reason": "wechat_code_needs_a_wechat_sign_in"})
        code = str(body["wechat_code"])
        try:
            # The caller's openid goes with the code: WeChat then refuses a code another user got.
            raw = platforms.wechat.get_phone_number(code, openid)
        except PlatformError as err:
            if err.transient or err.kind == "token":
                raise errors.UpstreamUnavailable() from err
            raise errors.PhoneNotVerified(details={"reason": "wechat_code_invalid"}) from err
        digest_source, via = "wechat:" + code, "wechat"
    else:
        if channel != "alipay":
            raise errors.PhoneNotVerified(details={"reason": "alipay_response_needs_an_alipay_sign_in"})
        if platforms.alipay_aes_key is None or not platforms.alipay_public_key:
            raise errors.UpstreamUnavailable("Alipay phone numbers are not configured (ALIPAY_AES_KEY).")
        text = str(body["alipay_response"])
        try:
            raw = open_phone_response(text, platforms.alipay_public_key, platforms.alipay_aes_key)
        except PhoneResponseInvalid as exc:
            raise errors.PhoneNotVerified(details={"reason": "alipay_response_invalid", "why": str(exc)}) from None
        # Used once by what Alipay signed (the ciphertext), not by the text as sent: re-serialising the
        # JSON (spacing, key order, extra keys) must not make a captured response new again.
        digest_source, via = "alipay:" + str(json.loads(text)["response"]), "alipay"
    number = normalize_mobile(raw)
    if number is None:
        raise errors.PhoneNotVerified("Only mainland mobile numbers can be matched with the registry.",
                                      details={"reason": "not_a_mainland_mobile"})
    digest = hashlib.sha256(digest_source.encode()).hexdigest()
    try:
        with session.begin():
            session.add(PhoneProof(digest=digest, user_id=user_id, channel=via, created_at=now))
            session.flush()
            user = session.scalars(locked_afresh(select(User).where(User.id == user_id))).one()
            user.phone_enc = pii.encrypt(number, context="user.phone")
            user.phone_bidx = phone_index(pii, number)
            user.phone_proof, user.phone_proven_at = via, now
            reserved = session.scalar(select(Person.phone_bidx).where(Person.id == user.person_id)) \
                if user.person_id is not None else None
            audit.record(session, actor_kind="user", actor_id=user_id, action="phone.prove", at=now, ip=ip,
                         details={"via": via, "phone": mask_mobile(number)})
    except IntegrityError:
        raise errors.PhoneNotVerified(details={"reason": "proof_already_used"}) from None
    return {"phone": mask_mobile(number), "proven_via": via, "proven_at": iso(now),
            "matches_reserved": None if reserved is None else hmac.compare_digest(reserved, user.phone_bidx)}


def check_phone_consistency(session: Session, policy: RegionPolicy, user_id: int, person_id: int) -> None:
    """R21 ``phone_check = "required"``: the owner's proven number must equal their reserved number.

    Call inside the binding's transaction. ``PHONE_NOT_VERIFIED`` when the user has proven no
    number, ``PHONE_MISMATCH`` when it differs from (or there is no) reserved number.
    """
    if policy.phone_check != "required":
        return
    user_phone = session.scalar(select(User.phone_bidx).where(User.id == user_id))
    if user_phone is None:
        raise errors.PhoneNotVerified()
    reserved = session.scalar(select(Person.phone_bidx).where(Person.id == person_id))
    if reserved is None or not hmac.compare_digest(reserved, user_phone):
        raise errors.PhoneMismatch(details={"reserved_phone_on_file": reserved is not None})


def set_reserved_phone(session: Session, pii: PiiCipher, staff_id: int, id_number: str, phone: str, now: datetime,
                       ip: str | None = None) -> dict[str, Any]:
    """Window staff update a person's reserved number after checking the ID card (audited).

    A number another person reserved too is saved all the same (families share a phone), and the
    answer says so (``shared_with_others``): such a number proves neither person's identity (R21),
    so they prove it with the platform real-name check or at the window. Who else reserved it is
    not said. Two clerks saving one number for two persons at the same moment may both miss the
    warning; linking reads the committed numbers, so the rule itself holds.

    A link made by the ``phone`` proof rested on holding the number on file; once the window puts
    another number on file, that proof is gone. Every user linked to this person by the phone proof
    whose proven number is not the new one is unlinked as migrations 0003 and 0007 did (``person_id``
    moves to ``unproven_person_id``; ``GET /me`` asks them to prove who they are again; the codes they
    hold stop working: ``identity.end_links``) — the holder of a stale, recycled number keeps nothing —
    and the person's inbox says so
    (``phone_links_ended`` counts them; the audit row names the users). Links by other proofs stay."""
    number = validate_id_number(id_number, today=shanghai_date(now))
    mobile = normalize_mobile(phone)
    if mobile is None:
        raise errors.ValidationFailed("The phone must be a mainland mobile number (11 digits, 13–19…).",
                                      details={"field": "phone"})
    with session.begin():
        # The person first (LOCK_ORDER in app.services.identity): a link being judged by the old
        # number either committed before this lock — and the users read next include it — or waits
        # for it and is then judged by the new number.
        person = session.scalar(locked_afresh(
            select(Person).where(Person.id_number_bidx == pii.blind_index(number, kind="id_number"))))
        if person is None:
            raise errors.NotFound("No such person in the registry.")
        new_bidx = phone_index(pii, mobile)
        linked = session.scalars(locked_afresh(
            select(User).where(User.person_id == person.id, User.identity_proof == "phone").order_by(User.id))).all()
        old = None if person.phone_enc is None else mask_mobile(pii.decrypt(person.phone_enc, context="person.phone"))
        person.phone_enc, person.phone_bidx = encrypt_person_phone(pii, mobile)
        person.updated_at = now
        shared = reserved_by_another(session, person.phone_bidx, person.id)
        ended = [user for user in linked if user.phone_bidx is None or not hmac.compare_digest(user.phone_bidx,
                                                                                                new_bidx)]
        vouchers_ended = end_links(session, ended, person.id, now)
        details: dict[str, Any] = {"old": old, "new": mask_mobile(mobile)}
        if shared:
            details["shared_with_others"] = True
        if ended:
            details["phone_links_ended"] = [user.id for user in ended]
            if vouchers_ended:
                details["vouchers_ended"] = vouchers_ended
            add_person_notice(
                session, person_id=person.id, kind="identity", event_key=f"ph{now:%y%m%d%H%M%S%f}",
                at=now, content={"event": "unlinked", "proof": "phone", "count": len(ended),
                                 "message": f"您的预留手机号已在医保经办窗口更换，凭原号码验证身份的{len(ended)}个账号"
                                            "已不能再使用您的医保个人账户；如是您本人的账号，请重新验证身份。"})
        audit.record(session, actor_kind="staff", actor_id=staff_id, action="person.phone", at=now, ip=ip,
                     target_kind="person", target_id=person.id, details=details)
        return {"person": person_view(pii, person), "phone": mask_mobile(mobile), "shared_with_others": shared,
                "phone_links_ended": len(ended)}
