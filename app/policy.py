"""Region policy (SPEC §4) and the pure binding rules R1–R3 and R5, plus the cap helpers of R8.

A deployment serves one region, chosen by ``REGION_CODE``; its rules are data in
``policies/<region_code>.toml``, validated strictly at start-up so a bad file stops the app with a
message naming the file, the field and the problem. The rule functions take plain values and
raise the domain errors of ``app.errors``; they read neither the clock nor the database.
"""

from __future__ import annotations

import re
import tomllib
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, fields
from datetime import date, datetime
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo

from app.errors import (
    AlreadyBound,
    BeneficiaryNotEligible,
    LimitAboveCap,
    OwnerNotEligible,
    ProofRequired,
    RelationshipNotAllowed,
    SelfBinding,
    TooManyBindings,
    ValidationFailed,
)
from app.security.id_number import PROVINCE_CODES

SHANGHAI = ZoneInfo("Asia/Shanghai")

# Listed in the order clients show them.
RELATIONSHIPS = ("spouse", "parent", "child", "sibling", "grandparent", "grandchild")
# binding_channels is descriptive data (which channels the region's own services offer). Bindings
# from a channel missing in it are NOT rejected: SPEC §4 says this backend also serves the
# mini-programs, e.g. Alipay in Wenshan whose row lists only the WeChat account and the window.
CHANNELS = ("wechat", "alipay", "window", "app", "tax")
OFFLINE_CHANNEL = "window"
BENEFICIARY_SCOPES = ("any", "same_province")
COPAY_ORDERS = ("balance_desc", "binding_order")
CONSENT_MODES = ("none", "required")
# R21: whether an online binding needs the owner's proven phone to equal the reserved number, and
# which proofs of identity link a user to a registry person.
PHONE_CHECK_MODES = ("required", "off")
IDENTITY_PROOFS = ("platform_realname", "phone", "window")
# TOML has no null: this string stands for SPEC's `null` (no published cap, no chronic extra).
NO_VALUE = "none"

_INVERSE_RELATIONSHIP = {
    "spouse": "spouse",
    "parent": "child",
    "child": "parent",
    "sibling": "sibling",
    "grandparent": "grandchild",
    "grandchild": "grandparent",
}

InsuranceType = Literal["employee", "resident"]
PersonStatus = Literal["active", "inactive"]
InitialBindingStatus = Literal["active", "pending_review", "pending_consent"]


class PolicyError(ValueError):
    """A policy file is missing or invalid; the message is ``"<path>: <field>: <problem>"``."""


@dataclass(frozen=True)
class RegionPolicy:
    """One region's co-pay rules (SPEC §4). Money is integer fen; ``None`` means no cap / no extra."""

    region_code: str
    name: str
    province: str
    relationships: frozenset[str]
    beneficiary_scope: str
    annual_cap_fen: int | None
    chronic_extra_fen: int | None
    copay_order: str
    binding_channels: frozenset[str]
    own_account_first: bool
    max_beneficiaries: int
    beneficiary_consent: str
    consent_min_age: int
    # R20: settlement is real time at the counter; a bill older than this is refused.
    max_settlement_delay_hours: int
    # R21 (defaults only for code that builds a policy by hand; every file must state both).
    phone_check: str = "off"
    identity_proof: frozenset[str] = frozenset(IDENTITY_PROOFS)

    def summary(self) -> dict[str, Any]:
        """The region's rules as shown to a user by ``GET /me``."""
        return {
            "region": self.region_code,
            "name": self.name,
            "relationships": [rel for rel in RELATIONSHIPS if rel in self.relationships],
            "annual_cap_fen": self.annual_cap_fen,
            "chronic_extra_fen": self.chronic_extra_fen,
            "max_beneficiaries": self.max_beneficiaries,
            "copay_order": self.copay_order,
            "phone_check": self.phone_check,
            "identity_proof": [proof for proof in IDENTITY_PROOFS if proof in self.identity_proof],
        }


@dataclass(frozen=True)
class PersonFacts:
    """What the rules need to know about an insured person from the registry."""

    person_id: int
    insurance_type: InsuranceType
    status: PersonStatus
    region_code: str
    has_account: bool
    birth_date: date

    def __post_init__(self) -> None:
        if self.insurance_type not in ("employee", "resident"):
            raise ValueError(f"unknown insurance_type {self.insurance_type!r}")
        if self.status not in ("active", "inactive"):
            raise ValueError(f"unknown person status {self.status!r}")
        if not re.fullmatch(r"[0-9]{6}", self.region_code):
            raise ValueError("region_code must be 6 digits")

    @property
    def province(self) -> str:
        """The 2-digit province of the region the person is insured in."""
        return self.region_code[:2]


# --- loading ---------------------------------------------------------------------------------


class _Problem(ValueError):
    pass


def load_policy(path: str | Path) -> RegionPolicy:
    """Read and strictly validate one policy file; raises PolicyError naming path and field."""
    path = Path(path)
    try:
        with path.open("rb") as file:
            data = tomllib.load(file)
    except OSError as error:
        raise PolicyError(f"{path}: file: cannot be read ({error.strerror})") from error
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise PolicyError(f"{path}: toml: {error}") from error

    unknown = sorted(set(data) - set(_PARSERS))
    if unknown:
        raise PolicyError(f"{path}: {unknown[0]}: unknown key")
    values: dict[str, Any] = {}
    for field in fields(RegionPolicy):
        if field.name not in data:
            raise PolicyError(f"{path}: {field.name}: missing (every key is required)")
        try:
            values[field.name] = _PARSERS[field.name](data[field.name])
        except _Problem as problem:
            raise PolicyError(f"{path}: {field.name}: {problem}") from None

    if values["region_code"] != path.stem:
        raise PolicyError(f"{path}: region_code: {values['region_code']!r} does not match the file name")
    if values["province"] != values["region_code"][:2]:
        raise PolicyError(f"{path}: province: must be the first 2 digits of region_code")
    if values["annual_cap_fen"] is None and values["chronic_extra_fen"] is not None:
        raise PolicyError(f'{path}: chronic_extra_fen: must be "{NO_VALUE}" when there is no annual cap')
    return RegionPolicy(**values)


def load_policies(directory: str | Path) -> dict[str, RegionPolicy]:
    """Load every ``*.toml`` in the directory, keyed by region code; any bad file is an error."""
    directory = Path(directory)
    if not directory.is_dir():
        raise PolicyError(f"{directory}: directory: not found")
    paths = sorted(directory.glob("*.toml"))
    if not paths:
        raise PolicyError(f"{directory}: files: no *.toml policy files")
    return {policy.region_code: policy for policy in map(load_policy, paths)}


def load_region_policy(directory: str | Path, region_code: str) -> RegionPolicy:
    """The policy for the deployment's ``REGION_CODE``, after validating every file in the directory."""
    policies = load_policies(directory)
    if region_code not in policies:
        known = ", ".join(sorted(policies))
        raise PolicyError(f"{directory}: REGION_CODE: no policy file {region_code}.toml (have {known})")
    return policies[region_code]


def _toml_type(value: Any) -> str:
    names = {bool: "boolean", int: "integer", float: "float", str: "string", list: "array", dict: "table"}
    return names.get(type(value), type(value).__name__)


def _string(pattern: str, description: str) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        if not isinstance(value, str):
            raise _Problem(f"expected a string ({description}), got {_toml_type(value)}")
        if not re.fullmatch(pattern, value):
            raise _Problem(f"expected {description}, got {value!r}")
        return value

    return parse


def _one_of(options: tuple[str, ...]) -> Callable[[Any], str]:
    return _string("|".join(map(re.escape, options)), "one of " + ", ".join(options))


def _set_of(options: tuple[str, ...]) -> Callable[[Any], frozenset[str]]:
    def parse(value: Any) -> frozenset[str]:
        if not isinstance(value, list) or not value:
            raise _Problem(f"expected a non-empty array of strings, got {_toml_type(value)}")
        for item in value:
            if item not in options:
                raise _Problem(f"unknown value {item!r} (allowed: {', '.join(options)})")
        if len(set(value)) != len(value):
            raise _Problem("values are repeated")
        return frozenset(value)

    return parse


def _integer(minimum: int, maximum: int | None = None) -> Callable[[Any], int]:
    def parse(value: Any) -> int:
        # bool is an int in Python, but `true` is not a number in a policy file.
        if isinstance(value, bool) or not isinstance(value, int):
            raise _Problem(f"expected an integer, got {_toml_type(value)}")
        if value < minimum or (maximum is not None and value > maximum):
            bounds = f"at least {minimum}" if maximum is None else f"between {minimum} and {maximum}"
            raise _Problem(f"must be {bounds}, got {value}")
        return value

    return parse


def _province(value: Any) -> str:
    code = _string(r"[0-9]{2}", "a 2-digit province code")(value)
    if code not in PROVINCE_CODES:
        raise _Problem(f"unknown province code {code!r}")
    return code


def _fen_or_none(value: Any) -> int | None:
    if value == NO_VALUE:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Problem(f'expected an amount in integer fen or "{NO_VALUE}", got {_toml_type(value)}')
    if value < 0:
        raise _Problem(f"money must not be negative, got {value}")
    return value


def _boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise _Problem(f"expected a boolean, got {_toml_type(value)}")
    return value


_PARSERS: dict[str, Callable[[Any], Any]] = {
    "region_code": _string(r"[1-9][0-9]{5}", "a 6-digit administrative code"),
    "name": _string(r"\S(?:.*\S)?", "a non-empty name"),
    "province": _province,
    "relationships": _set_of(RELATIONSHIPS),
    "beneficiary_scope": _one_of(BENEFICIARY_SCOPES),
    "annual_cap_fen": _fen_or_none,
    "chronic_extra_fen": _fen_or_none,
    "copay_order": _one_of(COPAY_ORDERS),
    "binding_channels": _set_of(CHANNELS),
    "own_account_first": _boolean,
    "max_beneficiaries": _integer(1),
    "beneficiary_consent": _one_of(CONSENT_MODES),
    "consent_min_age": _integer(0, 150),
    "max_settlement_delay_hours": _integer(1, 24 * 366),
    "phone_check": _one_of(PHONE_CHECK_MODES),
    "identity_proof": _set_of(IDENTITY_PROOFS),
}


# --- rules -----------------------------------------------------------------------------------


def check_owner(owner: PersonFacts, policy: RegionPolicy) -> None:
    """R1: the owner is active, employee-insured, has a personal account, insured in the province."""
    reason = owner_ineligibility(status=owner.status, insurance_type=owner.insurance_type,
                                 region_code=owner.region_code, has_account=owner.has_account,
                                 province=policy.province)
    if reason is not None:
        raise OwnerNotEligible(details={"reason": reason})


def owner_ineligibility(*, status: str, insurance_type: str, region_code: str, has_account: bool,
                        province: str) -> str | None:
    """R1 (and R11: an owner who is no longer eligible pays nothing): why this person cannot be an
    owner today — ``inactive``, ``not_employee_insurance``, ``no_personal_account``,
    ``outside_province`` — or None when they can. Used when binding and again at every settlement."""
    if status != "active":
        return "inactive"
    if insurance_type != "employee":
        return "not_employee_insurance"
    if not has_account:
        return "no_personal_account"
    if region_code[:2] != province:
        return "outside_province"
    return None


def check_beneficiary(owner: PersonFacts, beneficiary: PersonFacts, policy: RegionPolicy) -> None:
    """R2: not the owner, active, and within the policy's ``beneficiary_scope``.

    Matching the given name, ID and card number against the registry (BENEFICIARY_MISMATCH) is
    the service's job; see ``identity_matches``.
    """
    if owner.person_id == beneficiary.person_id:
        raise SelfBinding()
    if beneficiary.status != "active":
        raise BeneficiaryNotEligible(details={"reason": "inactive"})
    if policy.beneficiary_scope == "same_province" and beneficiary.province != policy.province:
        raise BeneficiaryNotEligible(details={"reason": "outside_scope"})


def identity_matches(given_name: str, given_card_no: str, registry_name: str, registry_card_no: str) -> bool:
    """R2: do the name and social-security card number typed by the owner match the registry?

    Both sides are NFKC-normalized with whitespace removed; card numbers compare case-insensitively
    and the middle dots of minority names (·, •, ・ …) count as one character.
    """
    return _normalized_name(given_name) == _normalized_name(registry_name) and _normalized_card_no(
        given_card_no
    ) == _normalized_card_no(registry_card_no)


def names_match(given_name: str, registry_name: str) -> bool:
    """Identity verification: the typed name is the registry's, with the same normalization as R2."""
    return _normalized_name(given_name) == _normalized_name(registry_name)


_MIDDLE_DOTS = str.maketrans(dict.fromkeys("\u2022\u2027\u2219\u22c5\u30fb\u0387\u16eb", "\u00b7"))


def _normalized_name(name: str) -> str:
    return "".join(unicodedata.normalize("NFKC", name).split()).translate(_MIDDLE_DOTS)


def _normalized_card_no(card_no: str) -> str:
    return "".join(unicodedata.normalize("NFKC", card_no).split()).upper()


def check_relationship(relationship: str, policy: RegionPolicy) -> None:
    """R3: the relationship (what the beneficiary is to the owner) is allowed in this region."""
    if relationship not in policy.relationships:
        allowed = [rel for rel in RELATIONSHIPS if rel in policy.relationships]
        raise RelationshipNotAllowed(details={"allowed": allowed})


def inverse_relationship(relationship: str) -> str:
    """What the owner is to the beneficiary (SPEC §7 households): parent↔child, grandparent↔grandchild."""
    try:
        return _INVERSE_RELATIONSHIP[relationship]
    except KeyError:
        raise ValueError(f"unknown relationship {relationship!r}") from None


def check_capacity(active_binding_count: int, policy: RegionPolicy) -> None:
    """R5: one more binding must keep the owner within ``max_beneficiaries``.

    When creating a binding, count active *and pending* bindings, so approvals and confirmations
    cannot push the owner over the limit later; re-check with the active count when one activates.
    """
    if active_binding_count < 0:
        raise ValueError("active_binding_count must not be negative")
    if active_binding_count >= policy.max_beneficiaries:
        raise TooManyBindings(details={"max_beneficiaries": policy.max_beneficiaries})


def check_not_already_bound(has_active_or_pending_binding: bool) -> None:
    """R5: the owner has no active or pending binding to this beneficiary already."""
    if has_active_or_pending_binding:
        raise AlreadyBound()


def proof_needed(relationship_confirmed_by_household: bool, channel: str) -> bool:
    """R3: an online binding needs a proof document unless the registry's households confirm it.

    At the window staff check paper proofs, so no upload is needed there.
    """
    _check_known_channel(channel)
    return channel != OFFLINE_CHANNEL and not relationship_confirmed_by_household


def check_proof(proof_needed: bool, document_count: int) -> None:
    """R3: raise ProofRequired when a proof is needed and no document was given."""
    if document_count < 0:
        raise ValueError("document_count must not be negative")
    if proof_needed and document_count == 0:
        raise ProofRequired()


def initial_status(
    channel: str, relationship_confirmed: bool, beneficiary_age: int, policy: RegionPolicy
) -> InitialBindingStatus:
    """R5: the status a new binding starts in.

    Window bindings start ``active`` (staff checked everything). Online ones start
    ``pending_review`` unless the household data confirms the relationship; confirmed ones are
    ``active``, or ``pending_consent`` (our name for "waiting for POST /bindings/{id}/confirm")
    when the policy requires the consent of a beneficiary of ``consent_min_age`` or more.
    """
    _check_known_channel(channel)
    if channel == OFFLINE_CHANNEL:
        return "active"
    if not relationship_confirmed:
        return "pending_review"
    return status_after_review(beneficiary_age, policy)


def status_after_review(beneficiary_age: int, policy: RegionPolicy) -> Literal["active", "pending_consent"]:
    """R5: where an online binding goes once its relationship is established (by data or staff)."""
    if beneficiary_age < 0:
        raise ValueError("beneficiary_age must not be negative")
    if policy.beneficiary_consent == "required" and beneficiary_age >= policy.consent_min_age:
        return "pending_consent"
    return "active"


def cap_for(policy: RegionPolicy, has_chronic_certification: bool) -> int | None:
    """R8: a beneficiary's annual co-pay cap in fen, or None when the region has no cap."""
    if policy.annual_cap_fen is None:
        return None
    if has_chronic_certification and policy.chronic_extra_fen is not None:
        return policy.annual_cap_fen + policy.chronic_extra_fen
    return policy.annual_cap_fen


def check_yearly_limit(
    limit_fen: int, policy: RegionPolicy, *, has_chronic_certification: bool = False
) -> None:
    """R8: an owner-set yearly limit is a whole number of fen, ≥ 0 and at most the policy cap.

    The cap is the beneficiary's (``cap_for``): pass ``has_chronic_certification`` to allow the
    chronic extra for a certified beneficiary.
    """
    if isinstance(limit_fen, bool) or not isinstance(limit_fen, int) or limit_fen < 0:
        raise ValidationFailed(
            "yearly_limit_fen must be a whole number of fen, 0 or more.",
            details={"field": "yearly_limit_fen"},
        )
    cap_fen = cap_for(policy, has_chronic_certification)
    if cap_fen is not None and limit_fen > cap_fen:
        raise LimitAboveCap(details={"cap_fen": cap_fen})


def shanghai_date(moment_utc: datetime) -> date:
    """The Asia/Shanghai calendar date of an aware moment (SPEC §3); naive datetimes are refused."""
    if moment_utc.tzinfo is None or moment_utc.utcoffset() is None:
        raise ValueError("a timezone-aware datetime is required")
    return moment_utc.astimezone(SHANGHAI).date()


def year_of(moment_utc: datetime) -> int:
    """The Asia/Shanghai calendar year of an aware moment: the year an annual cap counts in."""
    return shanghai_date(moment_utc).year


def _check_known_channel(channel: str) -> None:
    if channel not in CHANNELS:
        raise ValueError(f"unknown channel {channel!r}")
