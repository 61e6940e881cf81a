"""rotate-pii-key: every encrypted column re-encrypted under the new PII_KEY, in batches, resumable,
blind indexes untouched, look-ups working while it runs (R17)."""

from __future__ import annotations

import base64
import threading
import time
from datetime import UTC, date, datetime

import pytest
from sqlalchemy import select, text

from app.extensions import app_session
from app.security.id_number import make_id_number
from app.security.pii import index_key_b64_from, key_id
from app.security.pii_columns import ENCRYPTED_COLUMNS
from app.services.identity import person_view
from app.services.pii_rotation import RotationRefused, count_pending, rotate_pii
from app.services.registry import load_registry
from models import Base, Person
from tests.conftest import TEST_KEYS
from tests.helpers import sign_in_wechat

NEW_KEY = base64.urlsafe_b64encode(bytes(range(100, 132))).decode()
INDEX_KEY = TEST_KEYS["PII_INDEX_KEY"]  # the deployment's blind-index key, never derived from PII_KEY (issue 8)
OLD_KID = key_id(base64.urlsafe_b64decode(TEST_KEYS["PII_KEY"]))
NEW_KID = key_id(base64.urlsafe_b64decode(NEW_KEY))


def _registry(count: int) -> dict:
    persons = [{"id_number": make_id_number("532621", date(1950 + i % 60, 1 + i % 12, 1 + i % 28), i % 1000),
                "name": f"测试{i}", "social_card_no": f"M5326{i:010d}", "insurance_type": "resident",
                "region_code": "532621", "status": "active"} for i in range(count)]
    return {"as_of": datetime.now(UTC).isoformat(), "persons": persons, "accounts": [], "households": [],
            "institutions": [{"code": "H5326001", "name": "文山州人民医院", "kind": "hospital",
                              "region_code": "532601", "designated": True, "api_secret": "s3cret-H5326001-for-tests"}]}


@pytest.fixture
def loaded(app, client, sandbox):
    data = _registry(60)
    with app_session() as session:
        load_registry(session, app.extensions["domain"].pii, data, datetime.now(UTC))
    sign_in_wechat(client, sandbox)  # a user row with an encrypted WeChat session key
    return [p["id_number"] for p in data["persons"]]


def _rotated_app(make_app, **extra):
    return make_app(PII_KEY=NEW_KEY, PII_OLD_KEYS=TEST_KEYS["PII_KEY"], PII_INDEX_KEY=INDEX_KEY, **extra)


def _invoke(app, *args: str):
    """Run a CLI command in ``app`` (flask's runner reuses an app context that is already pushed)."""
    with app.app_context():
        return app.test_cli_runner().invoke(args=list(args))


def _all_tokens(app) -> list[tuple[str, str]]:
    engine = app.extensions["db.engine"]
    found = []
    with engine.connect() as conn:
        for col in ENCRYPTED_COLUMNS:
            for (token,) in conn.execute(text(f"SELECT {col.column} FROM {col.table} WHERE {col.column} IS NOT NULL")):
                found.append((col.context, token))
    return found


def test_every_encrypted_model_column_is_in_the_rotation_list():
    listed = {(c.table, c.column) for c in ENCRYPTED_COLUMNS}
    in_models = {(t.name, c.name) for t in Base.metadata.sorted_tables for c in t.columns if c.name.endswith("_enc")}
    assert in_models == listed, "add the new encrypted column to app/security/pii_columns.py"


def test_rotation_rewrites_every_value_and_the_old_key_can_go(app, make_app, loaded):
    rotated = _rotated_app(make_app)
    before = {(ctx, tok) for ctx, tok in _all_tokens(app)}
    assert before and all(tok.split(".")[1] == OLD_KID for _ctx, tok in before)
    # Closed at once: a connection left to the garbage collector keeps its read transaction (and on
    # SQLite its lock) until a collection happens to run, and the rotation below would wait for it.
    with app.extensions["db.engine"].connect() as conn:
        bidx_before = {r.id: r.id_number_bidx for r in conn.execute(select(Person.id, Person.id_number_bidx))}

    result = _invoke(rotated, "rotate-pii-key", "--batch-size", "7")
    assert result.exit_code == 0, result.output
    assert "every value is under the active key" in result.output
    assert "rows/s" in result.output

    after = _all_tokens(app)
    assert len(after) == len(before)
    assert all(tok.split(".")[1] == NEW_KID for _ctx, tok in after)
    # Nothing left, and a second run finds nothing to do.
    assert sum(count_pending(rotated.extensions["db.engine"], rotated.extensions["domain"].pii).values()) == 0
    again = _invoke(rotated, "rotate-pii-key")
    assert again.exit_code == 0 and "rewrote 0 rows" in again.output

    # Blind indexes unchanged; an app with only the new key (old key dropped) reads and finds everyone.
    new_only = make_app(PII_KEY=NEW_KEY, PII_INDEX_KEY=INDEX_KEY)
    pii = new_only.extensions["domain"].pii
    with new_only.app_context(), app_session() as session, session.begin():
        rows = session.execute(select(Person.id, Person.id_number_bidx)).all()
        assert {r.id: r.id_number_bidx for r in rows} == bidx_before
        for number in loaded:
            person = session.scalar(select(Person).where(Person.id_number_bidx == pii.blind_index(
                number, kind="id_number")))
            assert person is not None
            assert pii.decrypt(person.id_number_enc, context="person.id_number") == number
    for ctx, tok in after:
        pii.decrypt(tok, context=ctx)


def test_rotation_is_resumable(app, make_app, loaded):
    rotated = _rotated_app(make_app)
    engine, pii = rotated.extensions["db.engine"], rotated.extensions["domain"].pii
    total = sum(count_pending(engine, pii).values())

    class Stop(Exception):
        pass

    def stop_after_first_batch(*_args):
        raise Stop

    with pytest.raises(Stop):
        rotate_pii(engine, pii, batch_size=10, progress=stop_after_first_batch)
    left = sum(count_pending(engine, pii).values())
    assert left == total - 10  # the first batch was committed, the rest waits

    report = rotate_pii(engine, pii, batch_size=10)
    assert report.rewritten_rows == left and not report.unreadable
    assert sum(count_pending(engine, pii).values()) == 0


def test_refuses_without_the_original_blind_index_key(app, make_app, loaded):
    # A blind-index key other than the one the indexes were made with (here: one derived from the NEW
    # PII_KEY, as a careless operator might set) matches nothing: refused before anything is written.
    wrong = make_app(PII_KEY=NEW_KEY, PII_OLD_KEYS=TEST_KEYS["PII_KEY"], PII_INDEX_KEY=index_key_b64_from(NEW_KEY))
    before = _all_tokens(app)
    result = _invoke(wrong, "rotate-pii-key")
    assert result.exit_code == 1 and "PII_INDEX_KEY" in result.output
    assert _all_tokens(app) == before
    with pytest.raises(RotationRefused):
        rotate_pii(wrong.extensions["db.engine"], wrong.extensions["domain"].pii)


def test_a_value_under_an_unknown_key_is_reported_not_lost(app, make_app, loaded):
    stranger = base64.urlsafe_b64encode(bytes(range(200, 232))).decode()
    other = make_app(PII_KEY=stranger, PII_INDEX_KEY=INDEX_KEY)
    foreign = other.extensions["domain"].pii.encrypt("unknown-secret", context="institution.api_secret")
    with app.extensions["db.engine"].begin() as conn:
        conn.execute(text("UPDATE institutions SET api_secret_enc = :t"), {"t": foreign})
    rotated = _rotated_app(make_app)
    result = _invoke(rotated, "rotate-pii-key")
    assert result.exit_code == 1
    assert "institutions.api_secret_enc" in result.output and "unknown-secret" not in result.output
    with app.extensions["db.engine"].connect() as conn:
        assert conn.scalar(text("SELECT api_secret_enc FROM institutions")) == foreign  # left as it was
    # Everything else was rotated.
    assert all(tok.split(".")[1] == NEW_KID for ctx, tok in _all_tokens(app) if ctx != "institution.api_secret")


@pytest.mark.postgres
def test_look_ups_keep_working_during_rotation(app, make_app, postgres, client, sandbox):
    if not postgres:
        pytest.skip("needs PostgreSQL (TEST_DATABASE_URL): SQLite serialises writers, so a rotation cannot run "
                    "alongside readers there")
    data = _registry(600)
    with app_session() as session:
        load_registry(session, app.extensions["domain"].pii, data, datetime.now(UTC))
    numbers = [p["id_number"] for p in data["persons"]]
    rotated = _rotated_app(make_app)
    pii = rotated.extensions["domain"].pii
    stop = threading.Event()
    errors: list[str] = []
    lookups = [0]

    def reader(offset: int) -> None:
        i = offset
        with rotated.app_context():
            while not stop.is_set():
                number = numbers[i % len(numbers)]
                i += 7
                try:
                    with app_session() as session, session.begin():
                        person = session.scalar(select(Person).where(
                            Person.id_number_bidx == pii.blind_index(number, kind="id_number")))
                        assert person is not None, "look-up found nobody"
                        view = person_view(pii, person)
                        assert view["id_number"].endswith(number[-4:])
                    lookups[0] += 1
                except Exception as exc:  # noqa: BLE001 — collected and asserted below
                    errors.append(repr(exc))

    threads = [threading.Thread(target=reader, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.2)
        report = rotate_pii(rotated.extensions["db.engine"], pii, batch_size=25)
        time.sleep(0.2)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not errors, errors[:3]
    assert lookups[0] > 50
    assert report.rewritten_rows == 601 and not report.unreadable
    assert sum(count_pending(rotated.extensions["db.engine"], pii).values()) == 0


@pytest.mark.postgres
def test_a_value_rewritten_by_the_service_meanwhile_is_not_overwritten(app, make_app, loaded, postgres, monkeypatch):
    if not postgres:
        pytest.skip("needs PostgreSQL (TEST_DATABASE_URL): a second writer during the batch")
    import app.services.pii_rotation as rotation

    rotated = _rotated_app(make_app)
    pii = rotated.extensions["domain"].pii
    engine = rotated.extensions["db.engine"]
    fresh_token = pii.encrypt("新名字", context="person.name")
    original = rotation._rewrite_row
    done = []

    def rewrite_while_someone_writes(pii_, cols, row, report):
        if not done and cols[0].table == "persons":
            done.append(row.id)
            with engine.begin() as other:  # the service updates this person's name right now
                other.execute(text("UPDATE persons SET name_enc = :t WHERE id = :id"), {"t": fresh_token, "id": row.id})
        return original(pii_, cols, row, report)

    monkeypatch.setattr(rotation, "_rewrite_row", rewrite_while_someone_writes)
    report = rotate_pii(engine, pii, batch_size=50)
    assert report.skipped_changed == 1
    with engine.connect() as conn:
        assert conn.scalar(text("SELECT name_enc FROM persons WHERE id = :id"), {"id": done[0]}) == fresh_token
    # The next run picks up that row's other (still old) columns.
    assert sum(count_pending(engine, pii).values()) == 1
    assert rotate_pii(engine, pii).rewritten_rows == 1
    assert sum(count_pending(engine, pii).values()) == 0
