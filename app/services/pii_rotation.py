"""Re-encrypt personal data under the current PII_KEY (``rotate-pii-key``), online.

The procedure (docs/OPERATIONS.md): deploy the new ``PII_KEY`` with the old one in
``PII_OLD_KEYS`` everywhere first (every process then writes under the new key and reads both),
then run this. It walks each table of ``ENCRYPTED_COLUMNS`` by primary key in short batches, one
transaction each, and rewrites only the tokens whose key id is not the active one:

- *online*: a batch locks only its own rows, for milliseconds; readers never wait (MVCC), and a
  row a request rewrote meanwhile is left alone (the UPDATE compares the old token);
- *resumable*: what is already under the active key is filtered out in SQL, so a run that was
  stopped is simply started again and continues with what is left;
- blind indexes are not touched (they use ``PII_INDEX_KEY``, never rotated with ``PII_KEY``);
  before writing anything the run checks that the configured index key matches stored indexes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy import Engine, and_, bindparam, func, not_, or_, select, update

from app.security.pii import TOKEN_VERSION, PiiCipher, PiiTokenInvalid
from app.security.pii_columns import ENCRYPTED_COLUMNS, EncryptedColumn, columns_by_table
from models import Base


class RotationRefused(RuntimeError):
    """Rotating now would make data unreadable or unfindable; nothing was written."""


@dataclass
class RotationReport:
    scanned_rows: int = 0
    rewritten_rows: int = 0
    rewritten_values: int = 0
    skipped_changed: int = 0  # a concurrent writer replaced the token first (it wrote under the active key)
    unreadable: list[str] = field(default_factory=list)  # "table.column id=…: reason" (never the value)
    seconds: float = 0.0

    @property
    def rows_per_second(self) -> float:
        return self.rewritten_rows / self.seconds if self.seconds > 0 else 0.0


def _stale(col: EncryptedColumn, active_prefix: str):  # type: ignore[no-untyped-def]
    c = Base.metadata.tables[col.table].c[col.column]
    return and_(c.is_not(None), not_(c.startswith(active_prefix, autoescape=True)))


def count_pending(engine: Engine, pii: PiiCipher) -> dict[str, int]:
    """Rows per table that still hold a token under another key."""
    prefix = f"{TOKEN_VERSION}.{pii.active_key_id}."
    counts: dict[str, int] = {}
    with engine.connect() as conn:
        for table_name, cols in columns_by_table().items():
            table = Base.metadata.tables[table_name]
            counts[table_name] = conn.scalar(
                select(func.count()).select_from(table).where(or_(*(_stale(c, prefix) for c in cols)))
            ) or 0
    return counts


def check_blind_index_key(engine: Engine, pii: PiiCipher) -> None:
    """Refuse when the configured index key does not reproduce stored indexes (look-ups would fail)."""
    persons = Base.metadata.tables["persons"]
    with engine.connect() as conn:
        rows = conn.execute(
            select(persons.c.id, persons.c.id_number_enc, persons.c.id_number_bidx).order_by(persons.c.id).limit(5)
        ).all()
    for row in rows:
        try:
            number = pii.decrypt(row.id_number_enc, context="person.id_number")
        except PiiTokenInvalid as exc:
            raise RotationRefused(f"persons.id_number_enc id={row.id} does not decrypt with the configured keys "
                                  f"({exc}); put the key it was written with in PII_OLD_KEYS") from None
        if pii.blind_index(number, kind="id_number") != row.id_number_bidx:
            raise RotationRefused(
                "the blind-index key does not match the stored indexes: set PII_INDEX_KEY to the index key "
                "derived from the original PII_KEY (app.security.pii.index_key_b64_from) before rotating"
            )


def rotate_pii(
    engine: Engine,
    pii: PiiCipher,
    *,
    batch_size: int = 1000,
    progress: Callable[[str, int, int, RotationReport], None] | None = None,
    pause_seconds: float = 0.0,
) -> RotationReport:
    """Rewrite every token not under the active key; one short transaction per batch."""
    if batch_size < 1:
        raise ValueError("batch_size must be positive")
    check_blind_index_key(engine, pii)
    prefix = f"{TOKEN_VERSION}.{pii.active_key_id}."
    report = RotationReport()
    started = time.perf_counter()
    for table_name, cols in columns_by_table().items():
        table = Base.metadata.tables[table_name]
        id_col = table.c.id
        stale_any = or_(*(_stale(c, prefix) for c in cols))
        last_id = 0
        done_in_table = 0
        while True:
            with engine.begin() as conn:
                rows = conn.execute(
                    select(id_col, *(table.c[c.column] for c in cols))
                    .where(id_col > last_id, stale_any)
                    .order_by(id_col)
                    .limit(batch_size)
                ).all()
                if not rows:
                    break
                # Rows that change the same columns are written with one executemany (pipelined by
                # psycopg); each UPDATE still compares the old token, so a row a request rewrote
                # meanwhile is left as the request wrote it.
                groups: dict[tuple[str, ...], list[dict[str, object]]] = {}
                for row in rows:
                    report.scanned_rows += 1
                    changed = _rewrite_row(pii, cols, row, report)
                    if changed:
                        params: dict[str, object] = {"b_id": row.id}
                        for column, (old, new) in changed.items():
                            params[f"b_old_{column}"] = old
                            params[f"b_new_{column}"] = new
                        groups.setdefault(tuple(sorted(changed)), []).append(params)
                for columns, batch in groups.items():
                    statement = (
                        update(table)
                        .where(id_col == bindparam("b_id"), *(table.c[c] == bindparam(f"b_old_{c}") for c in columns))
                        .values({c: bindparam(f"b_new_{c}") for c in columns})
                    )
                    written = conn.execute(statement, batch).rowcount
                    report.rewritten_rows += written
                    report.rewritten_values += written * len(columns)
                    report.skipped_changed += len(batch) - written
                last_id = rows[-1].id
                done_in_table += len(rows)
            report.seconds = time.perf_counter() - started
            if progress is not None:
                progress(table_name, done_in_table, last_id, report)
            if pause_seconds:
                time.sleep(pause_seconds)
    report.seconds = time.perf_counter() - started
    return report


def _rewrite_row(pii: PiiCipher, cols: list[EncryptedColumn], row, report: RotationReport):  # type: ignore[no-untyped-def]
    changed: dict[str, tuple[str, str]] = {}
    for col in cols:
        token = getattr(row, col.column)
        if token is None:
            continue
        try:
            if not pii.needs_rotation(token):
                continue
            plaintext = pii.decrypt(token, context=col.context)
        except PiiTokenInvalid as exc:
            report.unreadable.append(f"{col.table}.{col.column} id={row.id}: {exc}")
            continue
        changed[col.column] = (token, pii.encrypt(plaintext, context=col.context))
    return changed


__all__ = ["ENCRYPTED_COLUMNS", "RotationRefused", "RotationReport", "count_pending", "rotate_pii"]
