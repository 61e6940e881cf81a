"""Every column that holds a PII token (``PiiCipher.encrypt``), in one list.

``rotate-pii-key`` re-encrypts exactly these columns, and a test checks that every ``*_enc``
column of the models is listed here — so a new encrypted column (e.g. a phone number) is covered
by adding one line. The context is the associated data the column's tokens were sealed with.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EncryptedColumn:
    table: str
    column: str
    context: str


ENCRYPTED_COLUMNS: tuple[EncryptedColumn, ...] = (
    EncryptedColumn("persons", "id_number_enc", "person.id_number"),
    EncryptedColumn("persons", "name_enc", "person.name"),
    EncryptedColumn("persons", "social_card_no_enc", "person.social_card_no"),
    EncryptedColumn("persons", "phone_enc", "person.phone"),
    EncryptedColumn("users", "phone_enc", "user.phone"),
    EncryptedColumn("staff_users", "totp_secret_enc", "staff.totp_secret"),
    EncryptedColumn("institutions", "api_secret_enc", "institution.api_secret"),
    EncryptedColumn("users", "wechat_session_key_enc", "user.wechat_session_key"),
)


def columns_by_table(columns: tuple[EncryptedColumn, ...] = ENCRYPTED_COLUMNS) -> dict[str, list[EncryptedColumn]]:
    grouped: dict[str, list[EncryptedColumn]] = {}
    for col in columns:
        grouped.setdefault(col.table, []).append(col)
    return grouped
