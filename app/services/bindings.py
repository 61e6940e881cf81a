"""Family bindings (R1–R5, R8, R16, R17): bind online or at the window with an e-signed pledge,
confirm, review, unbind, the owner's yearly limit, and look-ups.

Each public function is one use case in one transaction. Creating or activating a binding first
locks the owner's person row (``SELECT … FOR NO KEY UPDATE``), so counting the owner's live bindings and
adding one are serialised per owner and ``max_beneficiaries`` holds under concurrency; the partial
unique index ``uq_bindings_live_pair`` backs up "no duplicate live binding of a pair" and its
violation is reported as ALREADY_BOUND. Lock order everywhere: owner person row, then binding row.

Nothing is deleted: every change of a binding writes an authorization event (共济授权记录) naming
the actor, the channel and the reason, and staff actions an audit event as well.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from sqlalchemy import and_, case, func, insert, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, aliased

from app import errors
from app.pagination import clamp_limit, decode_cursor, page
from app.policy import (
    OFFLINE_CHANNEL,
    PersonFacts,
    RegionPolicy,
    check_beneficiary,
    check_capacity,
    check_not_already_bound,
    check_owner,
    check_proof,
    check_relationship,
    check_yearly_limit,
    identity_matches,
    initial_status,
    inverse_relationship,
    owner_ineligibility,
    proof_needed,
    shanghai_date,
    status_after_review,
)
from app.security.id_number import birth_date, completed_years, validate_id_number
from app.security.pii import PiiCipher, mask_id_number, mask_text
from app.security.pledge_signing import PledgeSigner
from app.services import audit
from app.services.auth import Principal
from app.services.documents import documents_for_binding
from app.services.identity import person_view
from app.services.phones import check_phone_consistency
from app.services.pledges import PledgeBook, attestation, verify_attestation
from models import (
    LIVE_BINDING_STATES,
    Account,
    AuthorizationEvent,
    Binding,
    BindingDocument,
    ChronicCertification,
    Document,
    Household,
    Person,
    Pledge,
    Suspension,
)

STAFF_WRITE_ROLES = ("window", "admin")
STATUS_EVENTS = {"active": "activated", "pending_review": "pending_review", "pending_consent": "pending_consent"}
BINDING_STATUSES = ("pending_review", "pending_consent", "active", "suspended", "unbound", "rejected")
MAX_REASON_CHARS = 500


@dataclass(frozen=True)
class Actor:
    """Who changed a binding, as its authorization events record it."""

    kind: str  # owner | beneficiary | staff | system
    id: int | None
    channel: str  # wechat | alipay | window | system

    @classmethod
    def of_staff(cls, caller: Principal) -> Actor:
        return cls("staff", caller.id, OFFLINE_CHANNEL)

    @classmethod
    def of_user(cls, caller: Principal, role: str) -> Actor:
        return cls(role, caller.id, caller.channel or "system")


# --- small helpers shared with suspensions and records ------------------------------------------


def clean_reason(reason: str | None, *, required: bool = False) -> str | None:
    """A free-text reason as stored: trimmed, at most 500 characters, with any ID or mobile number
    masked (R17: staff sometimes paste one into a reason)."""
    text = mask_text(reason.strip()) if isinstance(reason, str) else ""
    if len(text) > MAX_REASON_CHARS:
        raise errors.ValidationFailed("reason may be at most {count} characters.", params={"count": MAX_REASON_CHARS},
                                      details={"field": "reason"})
    if required and not text:
        raise errors.ValidationFailed("A reason is required.", details={"field": "reason"})
    return text or None


def add_event(session: Session, binding_id: int, event: str, actor: Actor, at: datetime,
              reason: str | None = None, details: dict[str, Any] | None = None) -> None:
    """Append one authorization event (R5, R16) in the caller's transaction, and the inbox notice it
    calls for (R21: the beneficiary hears about bindings naming them; the owner about a decline)."""
    from app.services.binding_notices import on_event

    record = AuthorizationEvent(binding_id=binding_id, event=event, actor_kind=actor.kind, actor_id=actor.id,
                                channel=actor.channel, reason=reason, details=details or {}, at=at)
    session.add(record)
    on_event(session, record, at)


def require_person(caller: Principal) -> int:
    """Users act as the registry person they verified as; before that they may not (403)."""
    if caller.person_id is None:
        raise errors.Forbidden("Verify your identity first.", details={"reason": "identity_not_verified"})
    return caller.person_id


def require_staff_writer(caller: Principal) -> None:
    """Window bindings, review and window unbinding are for the window and admin roles (auditors read)."""
    if caller.kind != "staff" or caller.role not in STAFF_WRITE_ROLES:
        raise errors.Forbidden("This needs the role window or admin.")


def lock_binding(session: Session, binding_id: int) -> Binding | None:
    return session.scalar(select(Binding).where(Binding.id == binding_id).with_for_update()
                          .execution_options(populate_existing=True))


def active_person_suspensions(session: Session, person_ids: Iterable[int]) -> set[tuple[str, int]]:
    """``(scope, person_id)`` of the unlifted owner/beneficiary suspensions among these persons (R11)."""
    ids = sorted(set(person_ids))
    if not ids:
        return set()
    rows = session.execute(
        select(Suspension.scope, Suspension.person_id)
        .where(Suspension.person_id.in_(ids), Suspension.lifted_at.is_(None),
               Suspension.scope.in_(("owner", "beneficiary")))
    ).all()
    return {(scope, person_id) for scope, person_id in rows}


def pair_suspension(session: Session, owner_id: int, beneficiary_id: int, *,
                    excluding: int | None = None) -> Suspension | None:
    """R11: the oldest unlifted binding-scope suspension of ANY binding between this owner and this
    beneficiary (``excluding`` one suspension). A suspension holds for the pair, not a binding row:
    unbinding and binding again does not lift it."""
    query = (select(Suspension).join(Binding, Binding.id == Suspension.binding_id)
             .where(Suspension.scope == "binding", Suspension.lifted_at.is_(None),
                    Binding.owner_person_id == owner_id, Binding.beneficiary_person_id == beneficiary_id))
    if excluding is not None:
        query = query.where(Suspension.id != excluding)
    return session.scalar(query.order_by(Suspension.id).limit(1))


def hold_if_suspended(session: Session, binding: Binding, actor: Actor, now: datetime) -> None:
    """R11 when a binding has just become ``active``: if its pair is under a binding-scope suspension it
    is ``suspended`` instead (lifting that suspension makes it active), and every suspension that
    holds it — pair, owner, beneficiary — is written in its authorization record, saying why."""
    held = pair_suspension(session, binding.owner_person_id, binding.beneficiary_person_id)
    if held is not None:
        binding.status = "suspended"
        add_event(session, binding.id, "suspended", actor, now, held.reason,
                  details={"suspension_id": held.id, "scope": "binding", "suspended_binding_id": held.binding_id,
                           "carried_over": True})
    for suspension in session.scalars(
            select(Suspension).where(Suspension.lifted_at.is_(None), or_(
                and_(Suspension.scope == "owner", Suspension.person_id == binding.owner_person_id),
                and_(Suspension.scope == "beneficiary", Suspension.person_id == binding.beneficiary_person_id),
            )).order_by(Suspension.id)):
        add_event(session, binding.id, "suspended", actor, now, suspension.reason,
                  details={"suspension_id": suspension.id, "scope": suspension.scope, "carried_over": True})


def binding_view(pii: PiiCipher, binding: Binding, owner: Person, beneficiary: Person, *,
                 suspensions: Collection[tuple[str, int]] = frozenset(), role: str | None = None,
                 province: str | None = None) -> dict[str, Any]:
    """The SPEC §5 binding, names and ID numbers masked (R17).

    ``suspended`` is true when R11 stops this binding from paying: the binding itself, its owner's
    co-pay use or its beneficiary is suspended. ``role`` is the caller's part in it (users only).

    A binding still waiting (for review or for the beneficiary's consent) is no tie yet between its
    people: anyone who knows a name, an ID number and a card number can ask for one. So a user reads
    on it only their own person-level suspension, never the other party's (R11, R16: staff's finding
    about a person must not be had by filing a request and withdrawing it); staff read everything.
    """
    live = binding.status in LIVE_BINDING_STATES
    if role is not None and binding.status not in ("active", "suspended"):
        suspensions = {(scope, person_id) for scope, person_id in suspensions if scope == role}
    view: dict[str, Any] = {
        "id": binding.id,
        "status": binding.status,
        "relationship": binding.relationship,
        "channel": binding.channel,
        "owner": person_view(pii, owner),
        "beneficiary": person_view(pii, beneficiary),
        "effective_at": binding.effective_at,
        "ended_at": binding.ended_at,
        "yearly_limit_fen": binding.yearly_limit_fen,
        "created_at": binding.created_at,
        "relationship_confirmed": binding.relationship_confirmed,
        "suspended": live and (binding.status == "suspended" or ("owner", owner.id) in suspensions
                               or ("beneficiary", beneficiary.id) in suspensions),
    }
    # R1 + R11: an owner who is no longer an active eligible owner pays nothing; say so. The
    # province check needs the deployment's ``province`` (passed by callers that have the policy).
    reason = owner_ineligibility(status=owner.status, insurance_type=owner.insurance_type,
                                 region_code=owner.region_code, has_account=True,
                                 province=owner.region_code[:2] if province is None else province)
    view["owner_eligible"] = reason is None
    view["owner_ineligible_reason"] = reason
    if role is not None:
        view["role"] = role
    return view


def _parties(session: Session, binding: Binding) -> tuple[Person, Person]:
    persons = {p.id: p for p in session.scalars(
        select(Person).where(Person.id.in_((binding.owner_person_id, binding.beneficiary_person_id))))}
    return persons[binding.owner_person_id], persons[binding.beneficiary_person_id]


def _render(session: Session, pii: PiiCipher, binding: Binding, role: str | None = None,
            province: str | None = None) -> dict[str, Any]:
    owner, beneficiary = _parties(session, binding)
    suspensions = active_person_suspensions(session, (owner.id, beneficiary.id))
    return binding_view(pii, binding, owner, beneficiary, suspensions=suspensions, role=role, province=province)


def _role_of(binding: Binding, person_id: int) -> str | None:
    if binding.owner_person_id == person_id:
        return "owner"
    if binding.beneficiary_person_id == person_id:
        return "beneficiary"
    return None


def _visible_binding(session: Session, caller: Principal, binding_id: int, *, lock: bool = False
                     ) -> tuple[Binding, str | None]:
    """The binding and the caller's role in it; 404 unless the caller is a party or staff (R16)."""
    person_id = None if caller.kind == "staff" else require_person(caller)
    query = select(Binding).where(Binding.id == binding_id).execution_options(populate_existing=True)
    binding = session.scalar(query.with_for_update() if lock else query)
    role = None if binding is None or person_id is None else _role_of(binding, person_id)
    if binding is None or (caller.kind != "staff" and role is None):
        raise errors.NotFound("No such binding.")
    return binding, role


def _as_owner(session: Session, caller: Principal, binding_id: int) -> Binding:
    binding, role = _visible_binding(session, caller, binding_id, lock=True)
    if role != "owner":
        raise errors.Forbidden("Only the account owner can do this.")
    return binding


# --- registry facts -------------------------------------------------------------------------------


def _person_with_account(session: Session, where: Any, *, lock: bool = False) -> tuple[Person, bool] | None:
    query = (
        select(Person, Account.id)
        .outerjoin(Account, and_(Account.person_id == Person.id, Account.kind == "personal"))
        .where(where)
        .execution_options(populate_existing=True)
    )
    if lock:
        # FOR NO KEY UPDATE, as every person lock (see suspensions._live_pair_binding).
        query = query.with_for_update(of=Person, key_share=True)
    row = session.execute(query).first()
    return None if row is None else (row[0], row[1] is not None)


def _facts(pii: PiiCipher, person: Person, has_account: bool) -> PersonFacts:
    number = pii.decrypt(person.id_number_enc, context="person.id_number")
    return PersonFacts(person_id=person.id, insurance_type=person.insurance_type,  # type: ignore[arg-type]
                       status=person.status, region_code=person.region_code,  # type: ignore[arg-type]
                       has_account=has_account, birth_date=birth_date(number))


def _live_counts(session: Session, owner_id: int, beneficiary_id: int, *, excluding: int | None = None
                 ) -> tuple[int, int]:
    """The owner's live bindings (pending, active, suspended), and how many of them are to this beneficiary."""
    query = select(
        func.count(),
        func.coalesce(func.sum(case((Binding.beneficiary_person_id == beneficiary_id, 1), else_=0)), 0),
    ).where(Binding.owner_person_id == owner_id, Binding.status.in_(LIVE_BINDING_STATES))
    if excluding is not None:
        query = query.where(Binding.id != excluding)
    total, pair = session.execute(query).one()
    return int(total), int(pair)


def _household_confirms(session: Session, owner_id: int, beneficiary_id: int, relationship: str) -> bool:
    """R3: a household row says the beneficiary is the owner's ``relationship`` (either direction)."""
    found = session.scalar(select(Household.id).where(or_(
        and_(Household.a_person_id == owner_id, Household.b_person_id == beneficiary_id,
             Household.relationship == relationship),
        and_(Household.a_person_id == beneficiary_id, Household.b_person_id == owner_id,
             Household.relationship == inverse_relationship(relationship)),
    )).limit(1))
    return found is not None


def _has_chronic_certification(session: Session, person_id: int, on: date) -> bool:
    found = session.scalar(select(ChronicCertification.id).where(
        ChronicCertification.person_id == person_id, ChronicCertification.revoked_at.is_(None),
        ChronicCertification.valid_from <= on, ChronicCertification.valid_to >= on,
    ).limit(1))
    return found is not None


def _is_live_pair_violation(exc: IntegrityError) -> bool:
    diag = getattr(exc.orig, "diag", None)
    if diag is not None and getattr(diag, "constraint_name", None):
        return diag.constraint_name == "uq_bindings_live_pair"
    message = str(exc.orig)
    return "uq_bindings_live_pair" in message or (
        "bindings.owner_person_id" in message and "bindings.beneficiary_person_id" in message)


# --- creating a binding ---------------------------------------------------------------------------


def bind_member(session: Session, *, pii: PiiCipher, policy: RegionPolicy, pledges: PledgeBook,
                signer: PledgeSigner, caller: Principal, beneficiary: dict[str, str], relationship: str,
                proof_document_ids: Sequence[int], pledge: dict[str, Any], now: datetime,
                ip: str) -> dict[str, Any]:
    """R1–R5: the signed-in owner binds a family member online, signing the pledge.

    Active at once when the registry's households confirm the relationship (or pending_consent
    where the policy wants an adult beneficiary's confirmation); otherwise pending_review with
    the proof documents, which are then required.
    """
    owner_person_id = require_person(caller)
    if caller.channel not in ("wechat", "alipay"):
        raise errors.Forbidden("Online binding is for mini-program users.")
    return _bind(
        session, pii=pii, policy=policy, pledges=pledges, signer=signer,
        owner_where=Person.id == owner_person_id, channel=caller.channel, actor=Actor.of_user(caller, "owner"),
        beneficiary=beneficiary, relationship=relationship, proof_document_ids=proof_document_ids,
        pledge=pledge, now=now, ip=ip, created_by_user_id=caller.id, created_by_staff_id=None,
    )


def bind_member_at_window(session: Session, *, pii: PiiCipher, policy: RegionPolicy, pledges: PledgeBook,
                          signer: PledgeSigner, caller: Principal, owner_id_number: str,
                          beneficiary: dict[str, str], relationship: str, proof_document_ids: Sequence[int],
                          pledge: dict[str, Any], now: datetime, ip: str) -> dict[str, Any]:
    """R3–R5 at the service window: staff checked the paper proofs, the owner signs the pledge there,
    and the binding is created active (channel ``window``)."""
    require_staff_writer(caller)
    number = validate_id_number(owner_id_number, today=shanghai_date(now))
    return _bind(
        session, pii=pii, policy=policy, pledges=pledges, signer=signer,
        owner_where=Person.id_number_bidx == pii.blind_index(number, kind="id_number"),
        channel=OFFLINE_CHANNEL, actor=Actor.of_staff(caller), beneficiary=beneficiary,
        relationship=relationship, proof_document_ids=proof_document_ids, pledge=pledge, now=now, ip=ip,
        created_by_user_id=None, created_by_staff_id=caller.id,
    )


def _bind(session: Session, *, pii: PiiCipher, policy: RegionPolicy, pledges: PledgeBook, signer: PledgeSigner,
          owner_where: Any, channel: str, actor: Actor, beneficiary: dict[str, str], relationship: str,
          proof_document_ids: Sequence[int], pledge: dict[str, Any], now: datetime, ip: str,
          created_by_user_id: int | None, created_by_staff_id: int | None) -> dict[str, Any]:
    text = pledges.check_agreed(pledge.get("version"), pledge.get("sha256"), pledge.get("agreed"))
    check_relationship(relationship, policy)
    number = validate_id_number(beneficiary["id_number"], today=shanghai_date(now))
    beneficiary_bidx = pii.blind_index(number, kind="id_number")
    try:
        with session.begin():
            found = _person_with_account(session, owner_where, lock=True)
            if found is None:
                raise errors.NotFound("No insured person has this ID number.", details={"field": "owner.id_number"})
            owner, owner_has_account = found
            owner_facts = _facts(pii, owner, owner_has_account)
            check_owner(owner_facts, policy)
            if created_by_user_id is not None:  # R21 phone_check: online bindings only
                check_phone_consistency(session, policy, created_by_user_id, owner.id)

            found = _person_with_account(session, Person.id_number_bidx == beneficiary_bidx)
            if found is None:
                raise errors.BeneficiaryMismatch()  # the same answer as a wrong name: no registry probing
            member, member_has_account = found
            if member.id == owner.id:
                raise errors.SelfBinding()
            if not identity_matches(beneficiary["name"], beneficiary["social_card_no"],
                                    pii.decrypt(member.name_enc, context="person.name"),
                                    pii.decrypt(member.social_card_no_enc, context="person.social_card_no")):
                raise errors.BeneficiaryMismatch()
            member_facts = _facts(pii, member, member_has_account)
            check_beneficiary(owner_facts, member_facts, policy)

            live, pair_live = _live_counts(session, owner.id, member.id)
            check_not_already_bound(pair_live > 0)
            check_capacity(live, policy)
            confirmed = _household_confirms(session, owner.id, member.id, relationship)
            documents = documents_for_binding(session, list(proof_document_ids), owner_person_id=owner.id,
                                              staff_may_have_uploaded=channel == OFFLINE_CHANNEL)
            check_proof(proof_needed(confirmed, channel), len(documents))
            age = _age(member_facts.birth_date, now)
            status = initial_status(channel, confirmed, age, policy)

            binding = Binding(
                owner_person_id=owner.id, beneficiary_person_id=member.id, relationship=relationship,
                channel=channel, status=status, effective_at=now if status == "active" else None,
                created_by_user_id=created_by_user_id, created_by_staff_id=created_by_staff_id,
                relationship_confirmed=confirmed or channel == OFFLINE_CHANNEL, created_at=now,
            )
            session.add(binding)
            session.flush()  # uq_bindings_live_pair fires here if a twin slipped past the check
            if documents:
                session.execute(insert(BindingDocument),
                                [{"binding_id": binding.id, "document_id": d.id} for d in documents])
            record = attestation(
                binding_id=binding.id, pledge=text, signer_person_id=owner.id, owner_person_id=owner.id,
                beneficiary_person_id=member.id, beneficiary_id_bidx=beneficiary_bidx, relationship=relationship,
                channel=channel, client_ip=ip, document_sha256=[d.sha256 for d in documents], signed_at=now,
                key_id=signer.key_id, witness_staff_id=created_by_staff_id,
            )
            session.add(Pledge(binding_id=binding.id, version=text.version, text_sha256=text.sha256, record=record,
                               signature=signer.sign(record), key_id=signer.key_id, created_at=now))
            add_event(session, binding.id, "created", actor, now,
                      details={"pledge_version": text.version, "documents": len(documents),
                               "relationship_confirmed_by_registry": confirmed})
            add_event(session, binding.id, STATUS_EVENTS[status], actor, now)
            if status == "active":
                hold_if_suspended(session, binding, actor, now)
                status = binding.status
            audit.record(session, actor_kind="staff" if actor.kind == "staff" else "user", actor_id=actor.id,
                         action="binding.create", at=now, target_kind="binding", target_id=binding.id, ip=ip,
                         details={"status": status, "channel": channel, "relationship": relationship,
                                  "owner_person_id": owner.id, "beneficiary_person_id": member.id})
            suspensions = active_person_suspensions(session, (owner.id, member.id))
    except IntegrityError as exc:
        if _is_live_pair_violation(exc):
            raise errors.AlreadyBound() from None
        raise
    role = None if actor.kind == "staff" else "owner"
    return binding_view(pii, binding, owner, member, suspensions=suspensions, role=role, province=policy.province)


# --- state changes --------------------------------------------------------------------------------


def _lock_for_activation(session: Session, pii: PiiCipher, policy: RegionPolicy, binding_id: int,
                         expected_status: str, now: datetime) -> tuple[Binding, int]:
    """Lock owner then binding, check the binding is still ``expected_status``, then check R1, R2 and
    max_beneficiaries again: the registry or the policy may have changed while the binding waited.
    Returns the binding and the beneficiary's age today."""
    owner_id = session.scalar(select(Binding.owner_person_id).where(Binding.id == binding_id))
    if owner_id is None:
        raise errors.NotFound("No such binding.")
    owner, owner_has_account = _person_with_account(session, Person.id == owner_id, lock=True)  # type: ignore[misc]
    binding = lock_binding(session, binding_id)
    assert binding is not None  # bindings are never deleted
    _require_status(binding, expected_status)
    member, member_has_account = _person_with_account(  # type: ignore[misc]
        session, Person.id == binding.beneficiary_person_id)
    owner_facts = _facts(pii, owner, owner_has_account)
    member_facts = _facts(pii, member, member_has_account)
    check_owner(owner_facts, policy)
    check_beneficiary(owner_facts, member_facts, policy)
    live, _ = _live_counts(session, binding.owner_person_id, binding.beneficiary_person_id, excluding=binding.id)
    check_capacity(live, policy)
    return binding, _age(member_facts.birth_date, now)


def _age(born: date, now: datetime) -> int:
    """Completed years today in Shanghai (a registry birth date in the future counts as 0)."""
    today = shanghai_date(now)
    return completed_years(born, today) if born <= today else 0


def _require_status(binding: Binding, *allowed: str) -> None:
    if binding.status not in allowed:
        raise errors.InvalidState("Not allowed while the binding is {status}.", params={"status": binding.status},
                                  details={"status": binding.status})


def _audit(session: Session, caller: Principal, action: str, binding: Binding, now: datetime, ip: str | None,
           reason: str | None, **details: Any) -> None:
    audit.record(session, actor_kind=caller.kind, actor_id=caller.id, action=action, at=now,
                 target_kind="binding", target_id=binding.id, ip=ip,
                 details={"status": binding.status, "reason": reason, **details})


def confirm_binding(session: Session, *, pii: PiiCipher, policy: RegionPolicy, caller: Principal, binding_id: int,
                    now: datetime, ip: str | None = None) -> dict[str, Any]:
    """R5: the beneficiary confirms, from their own mini-program, a binding waiting for their consent."""
    with session.begin():
        binding, role = _visible_binding(session, caller, binding_id)
        if role != "beneficiary":
            raise errors.Forbidden("Only the family member being bound can confirm.")
        binding, _years = _lock_for_activation(session, pii, policy, binding_id, "pending_consent", now)
        actor = Actor.of_user(caller, "beneficiary")
        binding.status, binding.effective_at = "active", now
        add_event(session, binding.id, "confirmed", actor, now)
        add_event(session, binding.id, "activated", actor, now)
        hold_if_suspended(session, binding, actor, now)
        _audit(session, caller, "binding.confirm", binding, now, ip, None)
        return _render(session, pii, binding, role, province=policy.province)


def approve_binding(session: Session, *, pii: PiiCipher, policy: RegionPolicy, caller: Principal, binding_id: int,
                    reason: str | None, now: datetime, ip: str | None = None) -> dict[str, Any]:
    """R5: staff approve a pending_review binding after checking its proofs; it becomes active
    (or waits for the adult beneficiary's consent where the policy requires it)."""
    require_staff_writer(caller)
    reason = clean_reason(reason)
    with session.begin():
        binding, age = _lock_for_activation(session, pii, policy, binding_id, "pending_review", now)
        actor = Actor.of_staff(caller)
        status = status_after_review(age, policy)
        binding.status, binding.relationship_confirmed = status, True
        if status == "active":
            binding.effective_at = now
        add_event(session, binding.id, "approved", actor, now, reason)
        add_event(session, binding.id, STATUS_EVENTS[status], actor, now)
        if status == "active":
            hold_if_suspended(session, binding, actor, now)
        _audit(session, caller, "binding.approve", binding, now, ip, reason)
        return _render(session, pii, binding, province=policy.province)


def decline_binding(session: Session, *, pii: PiiCipher, caller: Principal, binding_id: int, reason: str | None,
                    now: datetime, ip: str | None = None) -> dict[str, Any]:
    """R5/R21: the beneficiary refuses a binding that waits for their consent; it becomes
    ``rejected``, an authorization event records it and the owner is notified."""
    reason = clean_reason(reason)
    with session.begin():
        binding, role = _visible_binding(session, caller, binding_id, lock=True)
        if role != "beneficiary":
            raise errors.Forbidden("Only the family member being bound can decline.")
        _require_status(binding, "pending_consent")
        binding.status, binding.ended_at = "rejected", now
        add_event(session, binding.id, "declined", Actor.of_user(caller, "beneficiary"), now, reason)
        _audit(session, caller, "binding.decline", binding, now, ip, reason)
        return _render(session, pii, binding, role)


def reject_binding(session: Session, *, pii: PiiCipher, caller: Principal, binding_id: int, reason: str | None,
                   now: datetime, ip: str | None = None) -> dict[str, Any]:
    """R5: staff reject a pending_review binding, with a reason the owner will read."""
    require_staff_writer(caller)
    reason = clean_reason(reason, required=True)
    with session.begin():
        binding = lock_binding(session, binding_id)
        if binding is None:
            raise errors.NotFound("No such binding.")
        _require_status(binding, "pending_review")
        binding.status, binding.ended_at = "rejected", now
        add_event(session, binding.id, "rejected", Actor.of_staff(caller), now, reason)
        _audit(session, caller, "binding.reject", binding, now, ip, reason)
        return _render(session, pii, binding)


def unbind_member(session: Session, *, pii: PiiCipher, caller: Principal, binding_id: int, reason: str | None,
                  now: datetime, ip: str | None = None) -> dict[str, Any]:
    """R5: end a binding — the owner online, or staff at the window (with a reason). From then on it
    pays nothing (R6). A pending request can be withdrawn the same way."""
    staff = caller.kind == "staff"
    if staff:
        require_staff_writer(caller)
    reason = clean_reason(reason, required=staff)
    with session.begin():
        if staff:
            binding, role = lock_binding(session, binding_id), None
            if binding is None:
                raise errors.NotFound("No such binding.")
            actor = Actor.of_staff(caller)
        else:
            binding, role = _as_owner(session, caller, binding_id), "owner"
            actor = Actor.of_user(caller, "owner")
        _require_status(binding, *LIVE_BINDING_STATES)
        binding.status, binding.ended_at = "unbound", now
        add_event(session, binding.id, "unbound", actor, now, reason)
        _audit(session, caller, "binding.unbind", binding, now, ip, reason)
        return _render(session, pii, binding, role)


def set_yearly_limit(session: Session, *, pii: PiiCipher, policy: RegionPolicy, caller: Principal, binding_id: int,
                     yearly_limit_fen: int | None, now: datetime, ip: str | None = None) -> dict[str, Any]:
    """R8: the owner sets (or clears, with null) what their account pays for this beneficiary per
    calendar year; at most the beneficiary's cap (with the chronic extra when certified today)."""
    with session.begin():
        binding = _as_owner(session, caller, binding_id)
        _require_status(binding, *LIVE_BINDING_STATES)
        if yearly_limit_fen is not None:
            chronic = _has_chronic_certification(session, binding.beneficiary_person_id, shanghai_date(now))
            check_yearly_limit(yearly_limit_fen, policy, has_chronic_certification=chronic)
        previous = binding.yearly_limit_fen
        if previous != yearly_limit_fen:
            binding.yearly_limit_fen = yearly_limit_fen
            add_event(session, binding.id, "limit_changed", Actor.of_user(caller, "owner"), now,
                      details={"from_fen": previous, "to_fen": yearly_limit_fen})
            _audit(session, caller, "binding.limit", binding, now, ip, None,
                         from_fen=previous, to_fen=yearly_limit_fen)
        return _render(session, pii, binding, "owner", province=policy.province)


# --- reading --------------------------------------------------------------------------------------


def list_bindings(session: Session, *, pii: PiiCipher, caller: Principal, role: str | None = None,
                  status: str | None = None, owner_id_number: str | None = None,
                  beneficiary_id_number: str | None = None, cursor: str | None = None, limit: int | None = None,
                  now: datetime, ip: str | None = None, province: str | None = None) -> dict[str, Any]:
    """Bindings newest first, keyset-paginated (``{items, next_cursor}``).

    A user sees the bindings they are party to, as owner and as beneficiary (``role`` narrows it).
    Staff look bindings up by the owner's or the beneficiary's ID number, or by status (the review
    queue is ``status=pending_review``); look-ups by ID number are audit-logged.
    """
    limit = clamp_limit(limit)
    last_id = decode_cursor(cursor)
    if status is not None and status not in BINDING_STATUSES:
        raise errors.ValidationFailed("Unknown status.", details={"field": "status"})
    owner_p, member_p = aliased(Person), aliased(Person)
    query = (select(Binding, owner_p, member_p)
             .join(owner_p, owner_p.id == Binding.owner_person_id)
             .join(member_p, member_p.id == Binding.beneficiary_person_id))
    looked_up: dict[str, str] = {}
    if caller.kind == "staff":
        for label, alias, raw in (("owner", owner_p, owner_id_number), ("beneficiary", member_p,
                                                                        beneficiary_id_number)):
            if raw is not None:
                number = validate_id_number(raw, today=shanghai_date(now))
                query = query.where(alias.id_number_bidx == pii.blind_index(number, kind="id_number"))
                looked_up[f"{label}_id_number"] = mask_id_number(number)
    else:
        person_id = require_person(caller)
        sides = {"owner": Binding.owner_person_id == person_id,
                 "beneficiary": Binding.beneficiary_person_id == person_id}
        if role is not None and role not in sides:
            raise errors.ValidationFailed("role must be owner or beneficiary.", details={"field": "role"})
        query = query.where(sides[role] if role else or_(*sides.values()))
    if status is not None:
        query = query.where(Binding.status == status)
    if last_id is not None:
        query = query.where(Binding.id < last_id)
    with session.begin():
        rows = session.execute(query.order_by(Binding.id.desc()).limit(limit + 1)).all()
        suspensions = active_person_suspensions(
            session, [row[1].id for row in rows] + [row[2].id for row in rows])
        if looked_up:
            audit.record(session, actor_kind="staff", actor_id=caller.id, action="binding.lookup", at=now, ip=ip,
                         details=looked_up)

    def render(row: Any) -> dict[str, Any]:
        binding, owner, member = row
        who = None if caller.kind == "staff" else _role_of(binding, caller.person_id)  # type: ignore[arg-type]
        return binding_view(pii, binding, owner, member, suspensions=suspensions, role=who, province=province)

    return page(rows, limit, lambda row: row[0].id, render)


def get_binding(session: Session, *, pii: PiiCipher, caller: Principal, binding_id: int,
                province: str | None = None) -> dict[str, Any]:
    """One binding with its proof documents, for a party to it or staff (404 for anyone else)."""
    with session.begin():
        binding, role = _visible_binding(session, caller, binding_id)
        view = _render(session, pii, binding, role, province=province)
        documents = session.execute(
            select(Document.id, Document.sha256, Document.kind)
            .join(BindingDocument, BindingDocument.document_id == Document.id)
            .where(BindingDocument.binding_id == binding.id).order_by(Document.id)
        ).all()
    view["documents"] = [{"id": d.id, "sha256": d.sha256, "kind": d.kind} for d in documents]
    return view


def get_pledge(session: Session, *, signer: PledgeSigner, caller: Principal, binding_id: int, now: datetime,
               ip: str | None = None) -> dict[str, Any]:
    """R4: the binding's signed pledge attestation and whether it verifies now.

    Staff read the whole record, the owner's IP and the beneficiary's blind index among it, so a
    staff read is audit-logged (``pledge.read``) in the read's own transaction, as a proof
    document's is: no audit row, no record. The parties' reads of their own pledge are not."""
    with session.begin():
        binding, role = _visible_binding(session, caller, binding_id)
        pledge = session.scalar(select(Pledge).where(Pledge.binding_id == binding.id)
                                .execution_options(populate_existing=True))
        if pledge is None:
            raise errors.NotFound("This binding has no pledge.")
        if caller.kind == "staff":
            audit.record(session, actor_kind="staff", actor_id=caller.id, action="pledge.read", at=now,
                         target_kind="binding", target_id=binding.id, ip=ip,
                         details={"pledge_id": pledge.id, "version": pledge.version})
    verified = verify_attestation(signer, pledge.record, pledge.signature, binding_id=binding.id,
                                  version=pledge.version, text_sha256=pledge.text_sha256, key_id=pledge.key_id,
                                  owner_person_id=binding.owner_person_id,
                                  beneficiary_person_id=binding.beneficiary_person_id,
                                  relationship=binding.relationship, channel=binding.channel)
    hidden = _pledge_fields_hidden_from(role)
    stored = pledge.record if isinstance(pledge.record, dict) else {}
    record = {k: v for k, v in stored.items() if k not in hidden}
    return {"binding_id": binding.id, "version": pledge.version, "sha256": pledge.text_sha256,
            "key_id": pledge.key_id, "record": record, "signature": pledge.signature, "verified": verified,
            "redacted": sorted(hidden & set(stored))}


def _pledge_fields_hidden_from(role: str | None) -> frozenset[str]:
    """What of the signed record the beneficiary may not see: the owner's IP address and the blind
    index of the beneficiary's ID number (a keyed pseudonym that links records). The owner, who
    signed it, and staff see the whole record, which is what the signature covers (offline check)."""
    if role in (None, "owner"):
        return frozenset()
    return frozenset({"beneficiary_id_bidx", "client_ip"})
