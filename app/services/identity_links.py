"""The window's remedy for a link the person did not make (R21): staff see the accounts linked to a
person and end one.

A person is linked from a further account by a proof someone else may hold — a relative's WeChat
real-name, a window code they were tricked into showing, a phone proof of a number since recycled.
The accounts already linked hear of it (``identity.link_user``) and are told to go to the window.
There, after checking the ID card, staff look the person up (``linked_accounts``: channel, proof,
when, last sign-in, the proven phone masked — never an openid) and end the link of the account that
is not theirs (``end_link``): unlinked as migrations 0003 and 0007 did (``identity.end_links``),
audited with the clerk and the reason, and the person's inbox says so.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app import errors
from app.policy import shanghai_date
from app.security.id_number import validate_id_number
from app.security.pii import PiiCipher, mask_id_number, mask_mobile
from app.services import audit
from app.services.auth import Principal
from app.services.bindings import clean_reason, require_staff_writer
from app.services.identity import end_links, locked_afresh, person_view
from app.timefmt import iso
from models import Person, User
from notify.person_notices import add_person_notice

PLATFORMS = {"wechat": "微信", "alipay": "支付宝"}
# The most accounts one person's look-up lists (a person has a few; a long list is itself a finding).
MAX_LISTED = 50


def linked_accounts(session: Session, pii: PiiCipher, person_id: int) -> list[dict[str, Any]]:
    """The sign-ins linked to this person now, most recently signed in first: user id, channel,
    proof and when, last sign-in, the proven phone masked. No openid or Alipay id, even masked:
    the user id (which ``GET /me`` shows the user) is what staff and the person refer to."""
    users = session.execute(
        select(User.id, User.channel, User.identity_proof, User.identity_proven_at, User.verified_at,
               User.last_login_at, User.created_at, User.phone_enc)
        .where(User.person_id == person_id)
        .order_by(User.last_login_at.desc().nulls_last(), User.id.desc()).limit(MAX_LISTED)).all()
    return [{"user_id": u.id, "channel": u.channel, "proof": u.identity_proof,
             "proven_at": iso(u.identity_proven_at or u.verified_at), "last_login_at": iso(u.last_login_at),
             "signed_up_at": iso(u.created_at),
             "phone": None if u.phone_enc is None else mask_mobile(pii.decrypt(u.phone_enc, context="user.phone"))}
            for u in users]


def find_links(session: Session, pii: PiiCipher, caller: Principal, id_number: str, now: datetime,
               ip: str | None = None) -> dict[str, Any]:
    """The person with this ID number (masked) and the accounts linked to them; every staff role
    reads it, each look-up an audit event (as the console's 参保人查询)."""
    if caller.kind != "staff":
        raise errors.Forbidden("This is for service-window staff.")
    number = validate_id_number(id_number, today=shanghai_date(now))
    with session.begin():
        person = session.scalar(select(Person).where(Person.id_number_bidx == pii.blind_index(number,
                                                                                              kind="id_number")))
        audit.record(session, actor_kind="staff", actor_id=caller.id, action="identity.links", at=now, ip=ip,
                     target_kind="person", target_id=person.id if person else None,
                     details={"id_number": mask_id_number(number), "found": person is not None})
        if person is None:
            raise errors.NotFound("No insured person has this ID number.")
        return {"person": person_view(pii, person), "accounts": linked_accounts(session, pii, person.id)}


def end_link(session: Session, pii: PiiCipher, caller: Principal, user_id: int, reason: str | None,
             now: datetime, ip: str | None = None) -> dict[str, Any]:
    """End this sign-in's link to its person, after the window checked the person's ID card (R21).

    404 for an unknown user, 409 ``INVALID_STATE`` for one linked to no person. The person row is
    locked, then the user row, read afresh (LOCK_ORDER): a link being made or ended at the same
    moment is either seen or waits. The reason is required and stored masked."""
    require_staff_writer(caller)
    reason = clean_reason(reason, required=True)
    with session.begin():
        person_id = session.scalar(select(User.person_id).where(User.id == user_id))
        if person_id is None:
            if session.scalar(select(User.id).where(User.id == user_id)) is None:
                raise errors.NotFound("No such user.")
            raise errors.InvalidState("This sign-in is not linked to any person.")
        person = session.scalars(locked_afresh(select(Person).where(Person.id == person_id))).one()
        user = session.scalars(locked_afresh(select(User).where(User.id == user_id))).one()
        if user.person_id != person.id:  # ended, or linked elsewhere, since the first read: look again
            raise errors.InvalidState("This sign-in's link changed meanwhile; look the person up again.")
        proof, channel = user.identity_proof, user.channel
        vouchers_ended = end_links(session, [user], person.id, now)
        platform = PLATFORMS.get(channel, "")
        add_person_notice(
            # One notice per ended link (≤ 32 characters: the user and the microsecond, in hex).
            session, person_id=person.id, kind="identity", at=now, exclude_user_id=user.id,
            event_key=f"x{user.id:x}.{round(now.timestamp() * 1_000_000):x}",
            content={"event": "unlinked", "channel": channel, "proof": proof, "count": 1,
                     "message": f"医保经办窗口已解除一个{platform}账号与您身份的关联，该账号不能再使用您的"
                                "医保个人账户。如是您本人的账号，请重新验证身份。"})
        details: dict[str, Any] = {"person_id": person.id, "channel": channel, "proof": proof, "reason": reason}
        if vouchers_ended:
            details["vouchers_ended"] = vouchers_ended
        audit.record(session, actor_kind="staff", actor_id=caller.id, action="identity.unlink", at=now, ip=ip,
                     target_kind="user", target_id=user.id, details=details)
        return {"user_id": user.id, "channel": channel, "proof": proof, "ended_at": iso(now),
                "person": person_view(pii, person)}
