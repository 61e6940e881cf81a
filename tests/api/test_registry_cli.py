"""Operator CLI: load-registry (idempotent, all or nothing, row numbers), create-staff, seed-demo (SPEC §7)."""

from __future__ import annotations

import json
from datetime import date

from sqlalchemy import func, select

from app.extensions import app_session
from app.security.id_number import make_id_number
from models import Account, Household, Institution, LedgerEntry, Person, StaffUser


def registry(n: int = 3, balance: int = 1000) -> dict:
    people = [make_id_number("532621", date(1980, 1, 1 + i), 100 + i) for i in range(n)]
    return {
        "as_of": "2025-03-01T09:30:00+08:00",
        "persons": [{"id_number": p, "name": f"测试{i}", "social_card_no": f"C{i:08d}", "insurance_type": "employee",
                     "region_code": "532621", "status": "active"} for i, p in enumerate(people)],
        "accounts": [{"id_number": p, "balance_fen": balance} for p in people],
        "households": [{"a": people[0], "b": people[1], "relationship": "spouse"}],
        "institutions": [{"code": "H0001", "name": "测试医院", "kind": "hospital", "region_code": "532601",
                          "designated": True, "api_secret": "a-long-enough-secret-123"}],
    }


def run(app, tmp_path, data, *args):
    path = tmp_path / "registry.json"
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    return app.test_cli_runner().invoke(args=["load-registry", str(path), *args])


def counts():
    with app_session() as s, s.begin():
        return {
            "persons": s.scalar(select(func.count()).select_from(Person)),
            "accounts": s.scalar(select(func.count()).select_from(Account).where(Account.kind == "personal")),
            "households": s.scalar(select(func.count()).select_from(Household)),
            "institutions": s.scalar(select(func.count()).select_from(Institution)),
            "balance": s.scalar(select(func.sum(Account.balance_fen)).where(Account.kind == "personal")),
            "entries": s.scalar(select(func.count()).select_from(LedgerEntry)),
        }


def test_load_registry_loads_everything_and_twice_changes_nothing(app, tmp_path):
    first = run(app, tmp_path, registry())
    assert first.exit_code == 0, first.output
    after_first = counts()
    assert after_first == {"persons": 3, "accounts": 3, "households": 1, "institutions": 1, "balance": 3000,
                           "entries": 4}
    second = run(app, tmp_path, registry())
    assert second.exit_code == 0, second.output
    assert counts() == after_first


def test_a_changed_balance_is_posted_to_the_ledger_so_it_still_explains_the_balance(app, tmp_path):
    assert run(app, tmp_path, registry()).exit_code == 0
    assert run(app, tmp_path, registry(balance=2500)).exit_code == 0
    with app_session() as s, s.begin():
        for account in s.scalars(select(Account)):
            entries = s.scalar(select(func.coalesce(func.sum(LedgerEntry.amount_fen), 0))
                               .where(LedgerEntry.account_id == account.id))
            assert entries == account.balance_fen
    assert counts()["balance"] == 7500


def test_bad_rows_are_reported_by_row_number_and_nothing_is_loaded(app, tmp_path):
    data = registry()
    data["persons"][1]["id_number"] = data["persons"][1]["id_number"][:-1] + "0"
    data["persons"][2]["insurance_type"] = "gold"
    data["accounts"][0]["balance_fen"] = -5
    result = run(app, tmp_path, data)
    assert result.exit_code != 0
    assert "persons[2]: id_number" in result.output
    assert "persons[3]: insurance_type" in result.output
    assert "accounts[1]: balance_fen" in result.output
    assert counts()["persons"] == 0


def test_a_region_code_in_other_than_ascii_digits_is_a_bad_row(app, tmp_path):
    """"５３２６２１" and "٥٣٢٦٢١" pass str.isdigit(); the settlement rules compare region codes as
    ASCII digits, so such a code must not reach the registry."""
    data = registry()
    data["persons"][0]["region_code"] = "５３２６２１"
    data["institutions"][0]["region_code"] = "٥٣٢٦٠١"
    result = run(app, tmp_path, data)
    assert result.exit_code != 0
    assert "persons[1]: region_code" in result.output
    assert "institutions[1]: region_code" in result.output
    assert counts()["persons"] == 0


def test_an_account_for_an_unknown_person_loads_nothing(app, tmp_path):
    data = registry()
    data["accounts"].append({"id_number": make_id_number("532621", date(1970, 1, 1), 1), "balance_fen": 5})
    result = run(app, tmp_path, data)
    assert result.exit_code != 0
    assert "accounts[4]" in result.output
    assert counts()["persons"] == 0


def test_names_and_id_numbers_are_stored_only_encrypted(app, tmp_path):
    data = registry()
    assert run(app, tmp_path, data).exit_code == 0
    from sqlalchemy import text

    with app.extensions["db.engine"].connect() as conn:
        dump = " ".join(str(row) for row in conn.execute(text("SELECT * FROM persons")))
    assert data["persons"][0]["id_number"] not in dump
    assert "测试0" not in dump
    assert data["persons"][0]["social_card_no"] not in dump


def test_create_staff_prints_a_token_that_works_once_created(app, client):
    result = app.test_cli_runner().invoke(args=["create-staff", "alice", "--role", "auditor"])
    assert result.exit_code == 0
    token = result.output.strip()
    assert token.startswith("st_")
    # A staff token is not a user token.
    assert client.get("/api/v1/me", headers={"Authorization": f"Bearer {token}"}).status_code == 403


def test_seed_demo_can_run_twice(app):
    for _ in range(2):
        result = app.test_cli_runner().invoke(args=["seed-demo"])
        assert result.exit_code == 0, result.output
    assert counts()["persons"] == 7


def test_seed_demo_writes_the_staff_tokens_it_prints_to_a_private_file(app, tmp_path):
    path = tmp_path / "demo-staff-tokens.env"
    result = app.test_cli_runner().invoke(args=["seed-demo", "--tokens-file", str(path)])
    assert result.exit_code == 0, result.output
    printed = dict(line.strip().split(": ", 1) for line in result.output.splitlines() if line.startswith("  ")
                   and ": st_" in line)
    written = dict(line.split("=", 1) for line in path.read_text().splitlines())
    assert written == {f"{name.upper()}_TOKEN": token for name, token in printed.items()}
    assert {"WINDOW1_TOKEN", "AUDITOR1_TOKEN"} <= set(written)
    assert path.stat().st_mode & 0o777 == 0o600


def test_seed_demo_refuses_a_production_app_unless_told_it_is_a_scratch_database(app, monkeypatch):
    # The demo creates admin1 with a published console password and TOTP secret, institutions with
    # published API secrets, and moves balances: on a real deployment that is a back door and a
    # rewrite of the registry. Production refuses it, and writes nothing.
    monkeypatch.setitem(app.config, "APP_ENV", "production")
    before = counts()
    result = app.test_cli_runner().invoke(args=["seed-demo"])
    assert result.exit_code != 0
    assert "production" in result.output and "nothing was written" in result.output
    assert counts() == before
    with app_session() as s, s.begin():
        assert s.scalar(select(func.count()).select_from(StaffUser)) == 0

    # A deployment check on a scratch database says so explicitly.
    result = app.test_cli_runner().invoke(args=["seed-demo", "--scratch-database"])
    assert result.exit_code == 0, result.output
    assert counts()["persons"] == 7
