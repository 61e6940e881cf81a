"""Region policies (SPEC §4) and the pure binding rules R1–R3, R5 and the R8 cap helpers."""

from dataclasses import replace
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path

import pytest

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
from app.policy import (
    RELATIONSHIPS,
    PersonFacts,
    PolicyError,
    RegionPolicy,
    cap_for,
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
    load_policies,
    load_policy,
    load_region_policy,
    owner_ineligibility,
    proof_needed,
    shanghai_date,
    status_after_review,
    year_of,
)

POLICY_DIR = Path(__file__).resolve().parents[2] / "policies"
POLICIES = load_policies(POLICY_DIR)
REGIONS = sorted(POLICIES)
OTHER_PROVINCE = {"53": "370302", "37": "532621"}


@pytest.fixture(params=REGIONS)
def policy(request: pytest.FixtureRequest) -> RegionPolicy:
    return POLICIES[request.param]


def person(person_id: int, region_code: str, **changes: object) -> PersonFacts:
    facts = PersonFacts(
        person_id=person_id,
        insurance_type="employee",
        status="active",
        region_code=region_code,
        has_account=True,
        birth_date=date(1980, 1, 1),
    )
    return replace(facts, **changes)


def owner_in(policy: RegionPolicy, **changes: object) -> PersonFacts:
    return person(1, policy.province + "0102", **changes)


def beneficiary_in(policy: RegionPolicy, **changes: object) -> PersonFacts:
    return person(2, policy.province + "0103", insurance_type="resident", has_account=False, **changes)


# --- the policy files ------------------------------------------------------------------------


def test_the_three_spec_regions_have_policy_files() -> None:
    assert REGIONS == ["370300", "532600", "532800"]


def test_wenshan_has_the_values_of_spec_section_4() -> None:
    wenshan = POLICIES["532600"]
    assert wenshan == RegionPolicy(
        region_code="532600",
        name="云南文山",
        province="53",
        relationships=frozenset({"spouse", "parent", "child"}),
        beneficiary_scope="same_province",
        annual_cap_fen=200000,
        chronic_extra_fen=100000,
        copay_order="balance_desc",
        binding_channels=frozenset({"wechat", "window"}),
        own_account_first=True,
        max_beneficiaries=10,
        beneficiary_consent="none",
        consent_min_age=16,
        max_settlement_delay_hours=72,
        phone_check="required",
        identity_proof=frozenset({"platform_realname", "phone", "window"}),
    )


def test_zibo_has_the_values_of_spec_section_4() -> None:
    zibo = POLICIES["370300"]
    assert (zibo.name, zibo.province, zibo.relationships) == ("山东淄博", "37", frozenset(RELATIONSHIPS))
    assert (zibo.beneficiary_scope, zibo.annual_cap_fen, zibo.chronic_extra_fen) == ("any", None, None)
    assert (zibo.copay_order, zibo.binding_channels) == ("binding_order", frozenset({"app", "tax"}))
    assert (zibo.own_account_first, zibo.max_beneficiaries, zibo.beneficiary_consent) == (True, 8, "none")


def test_xishuangbanna_has_the_values_of_spec_section_4() -> None:
    banna = POLICIES["532800"]
    assert (banna.name, banna.province) == ("云南西双版纳", "53")
    assert banna.relationships == frozenset(RELATIONSHIPS)
    assert banna.beneficiary_scope == "same_province"
    assert (banna.annual_cap_fen, banna.chronic_extra_fen) == (None, None)
    assert (banna.copay_order, banna.binding_channels) == ("binding_order", frozenset({"wechat", "alipay"}))
    assert (banna.own_account_first, banna.max_beneficiaries, banna.beneficiary_consent) == (True, 10, "none")


def test_r20_every_region_settles_bills_at_most_72_hours_old() -> None:
    assert {code: policy.max_settlement_delay_hours for code, policy in POLICIES.items()} == {
        "370300": 72, "532600": 72, "532800": 72}


def test_r1_owner_ineligibility_names_the_first_reason() -> None:
    ok = {"status": "active", "insurance_type": "employee", "region_code": "532621", "has_account": True,
          "province": "53"}
    assert owner_ineligibility(**ok) is None
    assert owner_ineligibility(**{**ok, "status": "inactive"}) == "inactive"
    assert owner_ineligibility(**{**ok, "insurance_type": "resident"}) == "not_employee_insurance"
    assert owner_ineligibility(**{**ok, "has_account": False}) == "no_personal_account"
    assert owner_ineligibility(**{**ok, "region_code": "370302"}) == "outside_province"


def test_the_summary_for_get_me_lists_relationships_in_display_order() -> None:
    assert POLICIES["532600"].summary() == {
        "region": "532600",
        "name": "云南文山",
        "relationships": ["spouse", "parent", "child"],
        "annual_cap_fen": 200000,
        "chronic_extra_fen": 100000,
        "max_beneficiaries": 10,
        "copay_order": "balance_desc",
        "phone_check": "required",
        "identity_proof": ["platform_realname", "phone", "window"],
    }
    assert POLICIES["370300"].summary()["relationships"] == list(RELATIONSHIPS)


def test_r21_phone_check_is_required_in_wenshan_only_and_every_region_takes_all_three_proofs() -> None:
    assert {code: p.phone_check for code, p in POLICIES.items()} == {
        "532600": "required", "370300": "off", "532800": "off"}
    for policy in POLICIES.values():
        assert policy.identity_proof == frozenset({"platform_realname", "phone", "window"})


def test_the_deployment_region_is_picked_by_region_code() -> None:
    assert load_region_policy(POLICY_DIR, "532800") == POLICIES["532800"]
    with pytest.raises(PolicyError, match="REGION_CODE: no policy file 110100.toml"):
        load_region_policy(POLICY_DIR, "110100")


# --- bad policy files are clear start-up errors ----------------------------------------------


def write_variant(tmp_path: Path, old: str, new: str, name: str = "532600.toml") -> Path:
    text = (POLICY_DIR / "532600.toml").read_text(encoding="utf-8")
    assert old in text
    path = tmp_path / name
    path.write_text(text.replace(old, new), encoding="utf-8")
    return path


MAX = "max_beneficiaries = 10"
CAP = "annual_cap_fen = 200000"
RELATIONS = 'relationships = ["spouse", "parent", "child"]'
PROOFS = 'identity_proof = ["platform_realname", "phone", "window"]'


@pytest.mark.parametrize(
    ("old", "new", "field", "problem"),
    [
        (MAX, "max_beneficiaries = ", "toml", "Invalid value"),
        (MAX, MAX + "\nmax_beneficiary = 3", "max_beneficiary", "unknown key"),
        (MAX + "\n", "", "max_beneficiaries", "missing"),
        (MAX, 'max_beneficiaries = "10"', "max_beneficiaries", "expected an integer, got string"),
        (MAX, "max_beneficiaries = true", "max_beneficiaries", "expected an integer, got boolean"),
        (MAX, "max_beneficiaries = 0", "max_beneficiaries", "must be at least 1"),
        ("own_account_first = true", "own_account_first = 1", "own_account_first", "expected a boolean"),
        (CAP, "annual_cap_fen = -1", "annual_cap_fen", "money must not be negative"),
        (CAP, "annual_cap_fen = 2000.00", "annual_cap_fen", "got float"),
        (CAP, 'annual_cap_fen = "null"', "annual_cap_fen", 'or "none", got string'),
        (CAP, 'annual_cap_fen = "none"', "chronic_extra_fen", 'must be "none" when there is no annual cap'),
        ("chronic_extra_fen = 100000", "chronic_extra_fen = -1", "chronic_extra_fen", "must not be negative"),
        (RELATIONS, 'relationships = ["spouse", "cousin"]', "relationships", "unknown value 'cousin'"),
        (RELATIONS, 'relationships = ["spouse", "spouse"]', "relationships", "repeated"),
        (RELATIONS, 'relationships = "spouse"', "relationships", "non-empty array"),
        (RELATIONS, "relationships = []", "relationships", "non-empty array"),
        ('binding_channels = ["wechat", "window"]', 'binding_channels = ["fax"]', "binding_channels", "fax"),
        ('copay_order = "balance_desc"', 'copay_order = "random"', "copay_order", "one of balance_desc"),
        ('beneficiary_scope = "same_province"', 'beneficiary_scope = "all"', "beneficiary_scope", "one of"),
        ('beneficiary_consent = "none"', 'beneficiary_consent = "yes"', "beneficiary_consent", "one of none"),
        ('province = "53"', 'province = "99"', "province", "unknown province code"),
        ('province = "53"', 'province = "37"', "province", "first 2 digits of region_code"),
        ('province = "53"', "province = 53", "province", "expected a string"),
        ('name = "云南文山"', 'name = "  "', "name", "non-empty name"),
        ('region_code = "532600"', 'region_code = "532800"', "region_code", "does not match the file name"),
        ('region_code = "532600"', "region_code = 532600", "region_code", "expected a string"),
        ("consent_min_age = 16", "consent_min_age = -1", "consent_min_age", "between 0 and 150"),
        ("max_settlement_delay_hours = 72", "max_settlement_delay_hours = 0", "max_settlement_delay_hours",
         "between 1 and 8784"),
        ("max_settlement_delay_hours = 72", 'max_settlement_delay_hours = "72"', "max_settlement_delay_hours",
         "expected an integer"),
        ("max_settlement_delay_hours = 72", "max_settlement_delay_hours = true", "max_settlement_delay_hours",
         "expected an integer"),
        ("max_settlement_delay_hours = 72", "", "max_settlement_delay_hours", "missing"),
        ('phone_check = "required"', 'phone_check = "yes"', "phone_check", "one of required, off"),
        ('phone_check = "required"\n', "", "phone_check", "missing"),
        (PROOFS, 'identity_proof = ["platform_realname", "password"]', "identity_proof", "unknown value 'password'"),
        (PROOFS, "identity_proof = []", "identity_proof", "non-empty array"),
        (PROOFS, 'identity_proof = ["phone", "phone"]', "identity_proof", "repeated"),
        (PROOFS + "\n", "", "identity_proof", "missing"),
    ],
)
def test_a_bad_policy_file_is_refused_naming_file_field_and_problem(
    tmp_path: Path, old: str, new: str, field: str, problem: str
) -> None:
    path = write_variant(tmp_path, old, new)
    with pytest.raises(PolicyError) as excinfo:
        load_policy(path)
    message = str(excinfo.value)
    assert message.startswith(f"{path}: {field}: "), message
    assert problem in message


def test_a_policy_file_must_be_named_after_its_region_code(tmp_path: Path) -> None:
    path = write_variant(tmp_path, "max_beneficiaries = 10", "max_beneficiaries = 10", name="wenshan.toml")
    with pytest.raises(PolicyError, match="region_code: '532600' does not match the file name"):
        load_policy(path)


def test_a_policy_file_that_is_not_utf8_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "532600.toml"
    path.write_bytes((POLICY_DIR / "532600.toml").read_text(encoding="utf-8").encode("gbk"))
    with pytest.raises(PolicyError, match=": toml: "):
        load_policy(path)


def test_a_missing_policy_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="file: cannot be read"):
        load_policy(tmp_path / "532600.toml")


def test_one_bad_file_stops_loading_the_whole_directory(tmp_path: Path) -> None:
    zibo_text = (POLICY_DIR / "370300.toml").read_text(encoding="utf-8")
    (tmp_path / "370300.toml").write_text(zibo_text, encoding="utf-8")
    write_variant(tmp_path, "max_beneficiaries = 10", "max_beneficiaries = -3")
    with pytest.raises(PolicyError, match="532600.toml: max_beneficiaries"):
        load_region_policy(tmp_path, "370300")


def test_a_directory_without_policy_files_is_refused(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="no \\*.toml policy files"):
        load_policies(tmp_path)
    with pytest.raises(PolicyError, match="directory: not found"):
        load_policies(tmp_path / "nowhere")


# --- R1 owner --------------------------------------------------------------------------------


def test_r1_an_active_employee_with_an_account_in_the_province_may_share(policy: RegionPolicy) -> None:
    check_owner(owner_in(policy), policy)


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"status": "inactive"}, "inactive"),
        ({"insurance_type": "resident"}, "not_employee_insurance"),
        ({"has_account": False}, "no_personal_account"),
    ],
)
def test_r1_an_owner_who_is_not_an_active_employee_with_an_account_is_not_eligible(
    policy: RegionPolicy, changes: dict, reason: str
) -> None:
    with pytest.raises(OwnerNotEligible) as excinfo:
        check_owner(owner_in(policy, **changes), policy)
    assert excinfo.value.details == {"reason": reason}


def test_r1_an_owner_insured_in_another_province_is_not_eligible(policy: RegionPolicy) -> None:
    outsider = person(1, OTHER_PROVINCE[policy.province])
    with pytest.raises(OwnerNotEligible) as excinfo:
        check_owner(outsider, policy)
    assert excinfo.value.details == {"reason": "outside_province"}


def test_r1_an_owner_elsewhere_in_the_province_is_eligible() -> None:
    check_owner(person(1, "530102"), POLICIES["532600"])  # Kunming owner, Wenshan deployment


# --- R2 beneficiary --------------------------------------------------------------------------


def test_r2_an_active_resident_insured_relative_in_the_province_may_be_bound(policy: RegionPolicy) -> None:
    check_beneficiary(owner_in(policy), beneficiary_in(policy), policy)


def test_r2_nobody_binds_themselves(policy: RegionPolicy) -> None:
    owner = owner_in(policy)
    with pytest.raises(SelfBinding):
        check_beneficiary(owner, owner, policy)


def test_r2_an_inactive_beneficiary_is_not_eligible(policy: RegionPolicy) -> None:
    with pytest.raises(BeneficiaryNotEligible) as excinfo:
        check_beneficiary(owner_in(policy), beneficiary_in(policy, status="inactive"), policy)
    assert excinfo.value.details == {"reason": "inactive"}


@pytest.mark.parametrize("region", ["532600", "532800"])
def test_r2_same_province_regions_refuse_a_beneficiary_insured_in_another_province(region: str) -> None:
    policy = POLICIES[region]
    with pytest.raises(BeneficiaryNotEligible) as excinfo:
        check_beneficiary(owner_in(policy), person(2, "370302"), policy)
    assert excinfo.value.details == {"reason": "outside_scope"}


def test_r2_zibo_accepts_a_beneficiary_from_any_province() -> None:
    policy = POLICIES["370300"]
    check_beneficiary(owner_in(policy), person(2, "532621"), policy)


def test_r2_identity_matching_ignores_width_spacing_and_card_number_case() -> None:
    assert identity_matches(" 张三 ", "h5326 0012345", "张三", "H532600１2345")
    assert identity_matches("买买提•艾力", "1", "买买提·艾力", "1")


@pytest.mark.parametrize(
    ("name", "card_no"), [("张三丰", "H53260012345"), ("张三", "H53260012346"), ("张", "H53260012345")]
)
def test_r2_a_different_name_or_card_number_does_not_match(name: str, card_no: str) -> None:
    assert not identity_matches(name, card_no, "张三", "H53260012345")


# --- R3 relationship and proof ---------------------------------------------------------------


def test_r3_every_relationship_of_the_policy_is_allowed(policy: RegionPolicy) -> None:
    for relationship in policy.relationships:
        check_relationship(relationship, policy)


@pytest.mark.parametrize("relationship", ["sibling", "grandparent", "grandchild"])
def test_r3_wenshan_allows_only_spouse_parent_and_child(relationship: str) -> None:
    policy = POLICIES["532600"]
    with pytest.raises(RelationshipNotAllowed) as excinfo:
        check_relationship(relationship, policy)
    assert excinfo.value.details == {"allowed": ["spouse", "parent", "child"]}


@pytest.mark.parametrize("relationship", ["cousin", "", "SPOUSE"])
def test_r3_an_unknown_relationship_is_not_allowed_anywhere(policy: RegionPolicy, relationship: str) -> None:
    with pytest.raises(RelationshipNotAllowed):
        check_relationship(relationship, policy)


@pytest.mark.parametrize(
    ("relationship", "inverse"),
    [("spouse", "spouse"), ("parent", "child"), ("child", "parent"), ("sibling", "sibling"),
     ("grandparent", "grandchild"), ("grandchild", "grandparent")],
)
def test_household_relationships_have_an_inverse(relationship: str, inverse: str) -> None:
    assert inverse_relationship(relationship) == inverse
    assert inverse_relationship(inverse) == relationship


def test_an_unknown_relationship_has_no_inverse() -> None:
    with pytest.raises(ValueError):
        inverse_relationship("cousin")


@pytest.mark.parametrize("channel", ["wechat", "alipay", "app", "tax"])
def test_r3_online_a_proof_is_needed_only_when_households_do_not_confirm(channel: str) -> None:
    assert proof_needed(False, channel) is True
    assert proof_needed(True, channel) is False


def test_r3_at_the_window_no_upload_is_needed_because_staff_check_paper_proofs() -> None:
    assert proof_needed(False, "window") is False


def test_r3_an_unknown_channel_is_a_programming_error() -> None:
    with pytest.raises(ValueError):
        proof_needed(False, "fax")


def test_r3_a_needed_proof_must_come_with_a_document() -> None:
    with pytest.raises(ProofRequired):
        check_proof(True, 0)
    check_proof(True, 1)
    check_proof(False, 0)


# --- R5 lifecycle ----------------------------------------------------------------------------


def test_r5_an_owner_may_hold_up_to_max_beneficiaries_bindings(policy: RegionPolicy) -> None:
    check_capacity(policy.max_beneficiaries - 1, policy)
    with pytest.raises(TooManyBindings) as excinfo:
        check_capacity(policy.max_beneficiaries, policy)
    assert excinfo.value.details == {"max_beneficiaries": policy.max_beneficiaries}


def test_r5_the_same_beneficiary_cannot_be_bound_twice() -> None:
    check_not_already_bound(False)
    with pytest.raises(AlreadyBound):
        check_not_already_bound(True)


def test_r5_window_bindings_start_active(policy: RegionPolicy) -> None:
    assert initial_status("window", False, 40, policy) == "active"


@pytest.mark.parametrize("channel", ["wechat", "alipay"])
def test_r5_online_bindings_confirmed_by_households_start_active(policy: RegionPolicy, channel: str) -> None:
    assert initial_status(channel, True, 40, policy) == "active"


def test_r5_online_bindings_not_confirmed_by_households_wait_for_review(policy: RegionPolicy) -> None:
    assert initial_status("wechat", False, 40, policy) == "pending_review"


def test_r5_where_consent_is_required_a_beneficiary_of_16_must_confirm(policy: RegionPolicy) -> None:
    consenting = replace(policy, beneficiary_consent="required")
    assert initial_status("alipay", True, 16, consenting) == "pending_consent"
    assert initial_status("alipay", True, 15, consenting) == "active"
    assert initial_status("window", True, 40, consenting) == "active"
    assert initial_status("alipay", False, 40, consenting) == "pending_review"
    assert status_after_review(40, consenting) == "pending_consent"
    assert status_after_review(40, policy) == "active"


# --- R8 caps and owner limits ----------------------------------------------------------------


def test_r8_wenshan_caps_co_pay_at_2000_yuan_plus_the_chronic_extra() -> None:
    wenshan = POLICIES["532600"]
    assert cap_for(wenshan, has_chronic_certification=False) == 200000
    assert cap_for(wenshan, has_chronic_certification=True) == 300000


@pytest.mark.parametrize("region", ["370300", "532800"])
def test_r8_regions_without_a_published_cap_have_no_cap(region: str) -> None:
    assert cap_for(POLICIES[region], has_chronic_certification=True) is None


def test_r8_an_owner_limit_may_not_exceed_the_cap() -> None:
    wenshan = POLICIES["532600"]
    check_yearly_limit(0, wenshan)
    check_yearly_limit(200000, wenshan)
    with pytest.raises(LimitAboveCap) as excinfo:
        check_yearly_limit(200001, wenshan)
    assert excinfo.value.details == {"cap_fen": 200000}
    check_yearly_limit(300000, wenshan, has_chronic_certification=True)


@pytest.mark.parametrize("region", ["370300", "532800"])
def test_r8_without_a_cap_any_owner_limit_is_accepted(region: str) -> None:
    check_yearly_limit(10**12, POLICIES[region])


@pytest.mark.parametrize("limit", [-1, True, 100.0, "100"])
def test_r8_an_owner_limit_must_be_whole_non_negative_fen(policy: RegionPolicy, limit: object) -> None:
    with pytest.raises(ValidationFailed):
        check_yearly_limit(limit, policy)  # type: ignore[arg-type]


# --- calendar in Asia/Shanghai ---------------------------------------------------------------


def test_the_calendar_year_turns_at_midnight_in_shanghai_not_in_utc() -> None:
    assert year_of(datetime(2024, 12, 31, 15, 59, 59, tzinfo=UTC)) == 2024
    assert year_of(datetime(2024, 12, 31, 16, 0, tzinfo=UTC)) == 2025
    assert shanghai_date(datetime(2025, 3, 1, 9, 30, tzinfo=timezone(timedelta(hours=8)))) == date(2025, 3, 1)


def test_a_naive_datetime_is_refused() -> None:
    with pytest.raises(ValueError):
        year_of(datetime(2025, 1, 1))


def test_person_facts_refuse_values_the_rules_do_not_know() -> None:
    with pytest.raises(ValueError):
        person(1, "5326")
    with pytest.raises(ValueError):
        person(1, "532621", insurance_type="commercial")
    with pytest.raises(ValueError):
        person(1, "532621", status="deceased")
