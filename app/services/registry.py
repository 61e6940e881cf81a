"""``load-registry``: idempotent upsert of the insurance registry, all or nothing.

The whole file is validated first; any bad row stops the load with every problem listed by
its row number, and nothing is written.

Balances (R7, ledger): a load never sets a balance. The file's top-level ``as_of`` (ISO 8601 with an
offset; required when the file has accounts) is when the core insurance system took the snapshot.
For each account whose balance differs from the file, the load posts the difference in ONE balanced
``registry_sync`` journal against the ``registry`` contra account, carrying the file's SHA-256 and
``as_of``. An account that moved here after ``as_of`` — a settlement, a refund, or a ``registry_sync``
of a newer snapshot — is *stale*: the snapshot does not know that movement, so applying it would
undo it (give spent money back). Stale accounts are reported; the load then writes nothing
(``RegistryStale``) unless ``skip_stale`` is given, which loads everything else and leaves them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import BigInteger, String, and_, any_, bindparam, func, or_, select, update
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from app import errors
from app.policy import shanghai_date
from app.security.id_number import validate_id_number
from app.security.pii import PiiCipher
from app.services import audit
from app.services.ledger import clearing_account_ids, post_journal, system_account_id
from app.settlement_plan import is_region_code
from app.timefmt import iso, parse_aware
from models import Account, Household, Institution, Journal, LedgerEntry, Person

RELATIONSHIPS = {"spouse", "parent", "child", "sibling", "grandparent", "grandchild"}
INSTITUTION_KINDS = {"hospital", "clinic", "pharmacy"}
BATCH = 2000
SYNC_JOURNAL = "registry_sync"
# A snapshot cannot be taken in the future; allow the core system's clock to run a little ahead.
AS_OF_SKEW = timedelta(minutes=5)


class RegistryInvalid(Exception):
    """The file has bad rows; ``problems`` lists them as ``section[row]: field: problem``."""

    def __init__(self, problems: list[str]):
        super().__init__(f"{len(problems)} problem(s) in the registry file")
        self.problems = problems


class RegistryStale(Exception):
    """Accounts moved here after the file's ``as_of``, or persons were loaded from a newer snapshot;
    nothing was loaded (see ``skip_stale``)."""

    def __init__(self, report: LoadReport):
        super().__init__(f"{len(report.stale)} account(s) moved after as_of, "
                         f"{len(report.stale_persons)} person(s) from a newer snapshot")
        self.report = report


@dataclass
class StaleAccount:
    """An account the load left alone: it moved after ``as_of`` (the file's balance is out of date)."""

    account_id: int
    person_id: int
    balance_fen: int
    file_balance_fen: int
    row: int  # 1-based row in the file's accounts

    def describe(self) -> str:
        return (f"accounts[{self.row}]: account {self.account_id} (person {self.person_id}) moved after as_of; "
                f"balance {self.balance_fen} fen kept, file says {self.file_balance_fen} fen")


@dataclass
class LoadReport:
    persons: int = 0
    persons_new: int = 0
    accounts: int = 0
    balance_changes: int = 0
    households: int = 0
    institutions: int = 0
    sha256: str = ""
    as_of: str | None = None
    journal_id: int | None = None
    stale: list[StaleAccount] = field(default_factory=list)
    # persons rows (1-based) left because a newer snapshot already loaded that person
    stale_persons: list[int] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """What the audit record keeps (and the CLI prints)."""
        return {"persons": self.persons, "persons_new": self.persons_new, "accounts": self.accounts,
                "balance_changes": self.balance_changes, "households": self.households,
                "institutions": self.institutions, "sha256": self.sha256, "as_of": self.as_of,
                "journal_id": self.journal_id, "stale_account_ids": [s.account_id for s in self.stale],
                "stale_person_rows": self.stale_persons}


def _problem(problems: list[str], where: str, message: str) -> None:
    if len(problems) < 200:
        problems.append(f"{where}: {message}")


def _text(row: Mapping[str, Any], key: str, where: str, problems: list[str], max_len: int = 200) -> str:
    value = row.get(key)
    if not isinstance(value, str) or not value.strip() or len(value) > max_len:
        _problem(problems, where, f"{key}: required text of at most {max_len} characters")
        return ""
    return value.strip()


def validate(data: Any, today: date) -> tuple[list[str], dict[str, str]]:
    """Every problem in the file, by section and row number (1-based), and each person row's ID
    number as given → validated (so the load validates each number once). ``today`` is the
    Shanghai date of the load: a birth date after it is refused (R18)."""
    problems: list[str] = []
    numbers: dict[str, str] = {}
    if not isinstance(data, dict):
        return ["the file must be a JSON object with persons, accounts, households, institutions"], numbers
    unknown = set(data) - {"as_of", "persons", "accounts", "households", "institutions"}
    if unknown:
        problems.append(f"unknown section(s): {', '.join(sorted(unknown))}")
    if "as_of" in data or data.get("accounts") or data.get("persons"):
        try:
            parse_aware(data.get("as_of"), field="as_of")  # type: ignore[arg-type]
        except errors.ValidationFailed:
            problems.append("as_of: required when the file has persons or accounts: the snapshot time, ISO 8601 "
                            "with an offset (e.g. 2025-03-01T09:30:00+08:00)")
    known_ids: set[str] = set()
    for i, row in enumerate(data.get("persons", []), 1):
        where = f"persons[{i}]"
        if not isinstance(row, dict):
            _problem(problems, where, "must be an object")
            continue
        raw = str(row.get("id_number", ""))
        try:
            number = validate_id_number(raw, today=today)
            numbers[raw] = number
        except errors.IdNumberInvalid as exc:
            _problem(problems, where, f"id_number: {exc.message}")
            number = ""
        if number in known_ids:
            _problem(problems, where, "id_number: appears twice in the file")
        known_ids.add(number)
        _text(row, "name", where, problems, 50)
        _text(row, "social_card_no", where, problems, 32)
        if row.get("phone") is not None and _mobile(row["phone"]) is None:
            _problem(problems, where, "phone: must be a mainland mobile number (11 digits, 13–19…)")
        if row.get("insurance_type") not in ("employee", "resident"):
            _problem(problems, where, "insurance_type: must be employee or resident")
        region = row.get("region_code")
        if not is_region_code(region):
            _problem(problems, where, "region_code: must be 6 digits")
        if row.get("status", "active") not in ("active", "inactive"):
            _problem(problems, where, "status: must be active or inactive")
    for i, row in enumerate(data.get("accounts", []), 1):
        where = f"accounts[{i}]"
        balance = row.get("balance_fen") if isinstance(row, dict) else None
        if not isinstance(row, dict) or not isinstance(balance, int) or isinstance(balance, bool) or balance < 0:
            _problem(problems, where, "balance_fen: must be a non-negative integer (fen)")
    for i, row in enumerate(data.get("households", []), 1):
        where = f"households[{i}]"
        if not isinstance(row, dict) or row.get("relationship") not in RELATIONSHIPS:
            _problem(problems, where, f"relationship: must be one of {', '.join(sorted(RELATIONSHIPS))}")
        elif row.get("a") == row.get("b"):
            _problem(problems, where, "a and b must be different persons")
    for i, row in enumerate(data.get("institutions", []), 1):
        where = f"institutions[{i}]"
        if not isinstance(row, dict):
            _problem(problems, where, "must be an object")
            continue
        _text(row, "code", where, problems, 32)
        _text(row, "name", where, problems, 200)
        secret = _text(row, "api_secret", where, problems, 256)
        if secret and len(secret) < 16:
            _problem(problems, where, "api_secret: must be at least 16 characters")
        if row.get("kind") not in INSTITUTION_KINDS:
            _problem(problems, where, "kind: must be hospital, clinic or pharmacy")
        region = row.get("region_code")
        if not is_region_code(region):
            _problem(problems, where, "region_code: must be 6 digits")
        if not isinstance(row.get("designated", True), bool):
            _problem(problems, where, "designated: must be true or false")
    return problems, numbers


def _mobile(value: Any) -> str | None:
    from app.services.phones import normalize_mobile

    return normalize_mobile(value)


def _insert(session: Session):
    return pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert


def file_sha256(data: Any) -> str:
    """The SHA-256 of a registry given as parsed JSON (the CLI hashes the file's bytes instead)."""
    return hashlib.sha256(json.dumps(data, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
                          .encode("utf-8")).hexdigest()


def load_registry(session: Session, pii: PiiCipher, data: Any, now: datetime, *, sha256: str | None = None,
                  skip_stale: bool = False) -> LoadReport:
    """Validate then upsert everything in one transaction (nothing half-loaded).

    Balances move only by one ``registry_sync`` journal; accounts that moved after the file's
    ``as_of`` are left and listed in ``report.stale``, and then nothing at all is written
    (``RegistryStale``) unless ``skip_stale``.
    """
    today = shanghai_date(now)
    problems, numbers = validate(data, today)
    if problems:
        raise RegistryInvalid(problems)
    as_of = parse_aware(data["as_of"], field="as_of") if data.get("as_of") is not None else None
    if as_of is not None and as_of > now + AS_OF_SKEW:
        raise RegistryInvalid([f"as_of: {data['as_of']} is in the future"])
    report = LoadReport(sha256=sha256 or file_sha256(data), as_of=iso(as_of))
    insert = _insert(session)
    with session.begin():
        bidx_to_id = _upsert_persons(session, pii, insert, data.get("persons", []), numbers, now, report, as_of)

        resolved: dict[str, int] = {}

        def person_id(raw: Any, where: str) -> int:
            if raw in resolved:
                return resolved[raw]
            number = numbers.get(str(raw))
            if number is None:  # a person already in the registry, not in this file
                try:
                    number = validate_id_number(str(raw), today=today)
                except errors.IdNumberInvalid as exc:
                    raise RegistryInvalid([f"{where}: {exc.message}"]) from None
            bidx = pii.blind_index(number, kind="id_number")
            found = bidx_to_id.get(bidx)
            if found is None:
                found = session.scalar(select(Person.id).where(Person.id_number_bidx == bidx))
            if found is None:
                raise RegistryInvalid([f"{where}: id_number: no such person in the registry or file"])
            resolved[raw] = found
            return found

        _set_balances(session, insert, [
            (person_id(row["id_number"], f"accounts[{i}]"), row["balance_fen"], i)
            for i, row in enumerate(data.get("accounts", []), 1)
        ], now, report, as_of)
        if (report.stale or report.stale_persons) and not skip_stale:
            raise RegistryStale(report)  # leaving the block rolls everything back: all or nothing
        household_rows = [
            {"a_person_id": person_id(row["a"], f"households[{i}]"),
             "b_person_id": person_id(row["b"], f"households[{i}]"),
             "relationship": row["relationship"], "created_at": now}
            for i, row in enumerate(data.get("households", []), 1)
        ]
        if household_rows:
            households = insert(Household.__table__)
            _bulk(session).execute(
                households.on_conflict_do_update(index_elements=["a_person_id", "b_person_id"],
                                                 set_={"relationship": households.excluded.relationship}),
                household_rows,
            )
        report.households = len(household_rows)
        for row in data.get("institutions", []):
            _upsert_institution(session, pii, insert, row, now)
            report.institutions += 1
        audit.record(session, actor_kind="operator", actor_id=None, action="registry.load", at=now,
                     details=report.summary())
    return report


def _upsert_persons(session: Session, pii: PiiCipher, insert: Any, rows: list[dict], numbers: dict[str, str],
                    now: datetime, report: LoadReport, as_of: datetime | None) -> dict[str, int]:
    """Insert new persons and rewrite changed ones; unchanged rows (same source digest) are skipped,
    so reloading the same file re-encrypts and rewrites nothing. A person last written from a newer
    snapshot (``source_as_of`` after this file's ``as_of``) is left and reported: an old snapshot
    must not bring back a status, insurance type or region that has since changed (R1)."""
    bidx_to_id: dict[str, int] = {}
    upsert = _person_upsert(insert)
    for start in range(0, len(rows), BATCH):
        plain = []
        for row in rows[start:start + BATCH]:
            number = numbers[str(row["id_number"])]
            fields = (number, row["name"].strip(), row["social_card_no"].strip(), row["insurance_type"],
                      row["region_code"], row.get("status", "active"))
            phone = _mobile(row.get("phone"))
            if phone is not None:  # R21; rows without a phone keep their digest (and any number on file)
                fields = (*fields, phone)
            plain.append((pii.blind_index(number, kind="id_number"),
                          pii.blind_index(json.dumps(fields, ensure_ascii=False), kind="registry_row"), fields))
        existing = {bidx: (person_id, digest) for bidx, person_id, digest in session.execute(
            select(Person.id_number_bidx, Person.id, Person.source_digest)
            .where(_among(session, Person.id_number_bidx, [bidx for bidx, _, _ in plain], String)))}
        report.persons_new += len(plain) - len(existing)
        values = []
        sent_rows: dict[str, int] = {}
        for n, (bidx, digest, (number, name, card, kind, region, status, *phone)) in enumerate(plain, start + 1):
            if bidx in existing and existing[bidx][1] == digest:
                bidx_to_id[bidx] = existing[bidx][0]
                continue
            sent_rows[bidx] = n
            values.append({
                "phone_enc": pii.encrypt(phone[0], context="person.phone") if phone else None,
                "phone_bidx": pii.blind_index(phone[0], kind="mobile") if phone else None,
                "id_number_bidx": bidx, "source_digest": digest,
                "id_number_enc": pii.encrypt(number, context="person.id_number"),
                "name_enc": pii.encrypt(name, context="person.name"),
                "social_card_no_enc": pii.encrypt(card, context="person.social_card_no"),
                "insurance_type": kind, "region_code": region, "status": status, "source_as_of": as_of,
                "created_at": now, "updated_at": now,
            })
        if values:
            # executemany (insertmanyvalues): compiled once, sent in pages, RETURNING in order.
            for person_id, bidx in _bulk(session).execute(upsert, values):
                bidx_to_id[bidx] = person_id
                sent_rows.pop(bidx, None)
            # What did not come back was not written: a newer snapshot had loaded that person.
            report.stale_persons.extend(sorted(sent_rows.values()))
        report.persons += len(plain)
    return bidx_to_id


def _person_upsert(insert: Any) -> Any:
    persons = Person.__table__
    stmt = insert(persons)
    return stmt.on_conflict_do_update(
        index_elements=["id_number_bidx"],
        set_={**{name: stmt.excluded[name] for name in (
            "id_number_enc", "name_enc", "social_card_no_enc", "insurance_type", "region_code", "status",
            "source_digest", "source_as_of", "updated_at")},
            # R21: a file row without a phone keeps the reserved number on file (e.g. set at the window).
            **{name: func.coalesce(stmt.excluded[name], persons.c[name]) for name in ("phone_enc", "phone_bidx")}},
        # Never overwrite a person with an older snapshot than the one that last wrote them.
        where=or_(persons.c.source_as_of.is_(None), stmt.excluded.source_as_of >= persons.c.source_as_of),
    ).returning(persons.c.id, persons.c.id_number_bidx)


def _set_balances(session: Session, insert: Any, wanted: list[tuple[int, int, int]], now: datetime,
                  report: LoadReport, as_of: datetime | None) -> None:
    """Post the differences between the file's balances and ours as one ``registry_sync`` journal,
    leaving (and reporting) the accounts that moved after ``as_of``."""
    registry_account = system_account_id(session, "registry")
    accounts = Account.__table__
    entries: list[tuple[int, int]] = []
    rows = {pid: row for pid, _, row in wanted}
    for start in range(0, len(wanted), BATCH):
        chunk = {pid: fen for pid, fen, _ in wanted[start:start + BATCH]}
        # Lock the accounts being set, in id order as settlements do (no deadlock), so a settlement
        # running meanwhile is ordered before or after.
        current = {pid: (account_id, balance) for account_id, pid, balance in session.execute(
            select(Account.id, Account.person_id, Account.balance_fen)
            .where(_among(session, Account.person_id, list(chunk), BigInteger))
            .order_by(Account.id).with_for_update()
        )}
        missing = [pid for pid in chunk if pid not in current]
        if missing:
            created = _bulk(session).execute(
                insert(accounts).returning(accounts.c.id, accounts.c.person_id),
                [{"kind": "personal", "person_id": pid, "balance_fen": 0, "created_at": now, "updated_at": now}
                 for pid in missing],
            )
            current.update({pid: (account_id, 0) for account_id, pid in created})
        differing = {current[pid][0]: pid for pid, wanted_fen in chunk.items()
                     if wanted_fen != current[pid][1] and pid not in missing}
        stale = _moved_after(session, list(differing), as_of) if differing else set()
        changes = []
        for pid, wanted_fen in chunk.items():
            account_id, balance = current[pid]
            if account_id in stale:
                report.stale.append(StaleAccount(account_id, pid, balance, wanted_fen, rows[pid]))
            elif wanted_fen != balance:
                changes.append((account_id, wanted_fen))
                entries.append((account_id, wanted_fen - balance))
        if changes:
            _set_account_balances(session, changes, now)
        report.accounts += len(chunk)
    if entries:
        report.balance_changes = len(entries)
        entries.append((registry_account, -sum(amount for _, amount in entries)))
        report.journal_id = post_journal(session, SYNC_JOURNAL, entries, now,
                                         memo=f"load-registry sha256={report.sha256}")
        session.execute(update(Journal).where(Journal.id == report.journal_id)
                        .values(source_sha256=report.sha256, as_of=as_of))
        session.execute(
            update(Account).where(Account.id == registry_account)
            .values(balance_fen=Account.balance_fen + entries[-1][1])
        )


def _moved_after(session: Session, account_ids: list[int], as_of: datetime | None) -> set[int]:
    """The accounts with a ledger movement the snapshot taken at ``as_of`` cannot know: any entry
    posted after ``as_of`` except registry loads, or a ``registry_sync`` of a newer snapshot.
    (Without ``as_of`` — a file without accounts — nothing is checked: there is nothing to apply.)"""
    if as_of is None:
        return set()
    journals, entries = Journal.__table__, LedgerEntry.__table__
    query = (select(entries.c.account_id).distinct()
             .join(journals, journals.c.id == entries.c.journal_id)
             .where(_among(session, entries.c.account_id, account_ids, BigInteger),
                    or_(and_(journals.c.kind.not_in(("registry", SYNC_JOURNAL)), journals.c.created_at > as_of),
                        and_(journals.c.kind == SYNC_JOURNAL, journals.c.as_of > as_of))))
    return set(session.scalars(query))


def _set_account_balances(session: Session, changes: list[tuple[int, int]], now: datetime) -> None:
    """Set many balances: one UPDATE … FROM (VALUES …) on PostgreSQL, executemany elsewhere."""
    accounts = Account.__table__
    if session.get_bind().dialect.name == "postgresql":
        ids, balances = zip(*changes, strict=True)
        wanted = func.unnest(bindparam("ids", list(ids), ARRAY(BigInteger)),
                             bindparam("balances", list(balances), ARRAY(BigInteger))
                             ).table_valued("id", "balance").render_derived(name="wanted")
        session.execute(
            update(accounts).where(accounts.c.id == wanted.c.id)
            .values(balance_fen=wanted.c.balance, updated_at=now)
        )
    else:
        _bulk(session).execute(
            update(accounts).where(accounts.c.id == bindparam("b_id"))
            .values(balance_fen=bindparam("balance"), updated_at=now),
            [{"b_id": account_id, "balance": balance} for account_id, balance in changes],
        )


def _among(session: Session, col: Any, items: list[Any], item_type: Any) -> Any:
    """``col IN items``; on PostgreSQL as ``= ANY(array)``, one parameter instead of thousands."""
    if session.get_bind().dialect.name == "postgresql":
        return col == any_(bindparam(None, items, ARRAY(item_type)))
    return col.in_(items)


def _bulk(session: Session) -> Any:
    # Small insertmanyvalues pages keep each statement short enough for psycopg's query cache,
    # which otherwise re-parses a very long statement for every page.
    return session.connection().execution_options(insertmanyvalues_page_size=40)


def _upsert_institution(session: Session, pii: PiiCipher, insert: Any, row: dict, now: datetime) -> None:
    values = {
        "code": row["code"].strip(),
        "name": row["name"].strip(),
        "kind": row["kind"],
        "region_code": row["region_code"],
        "designated": row.get("designated", True),
        "active": row.get("active", True),
        "api_secret_enc": pii.encrypt(row["api_secret"].strip(), context="institution.api_secret"),
        "created_at": now,
        "updated_at": now,
    }
    stmt = insert(Institution).values(values)
    institution_id = session.execute(
        stmt.on_conflict_do_update(
            index_elements=["code"],
            set_={k: stmt.excluded[k] for k in ("name", "kind", "region_code", "designated", "active",
                                                "api_secret_enc", "updated_at")},
        ).returning(Institution.id)
    ).scalar_one()
    clearing_account_ids(session, institution_id)
