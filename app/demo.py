"""The demo registry loaded by ``seed-demo``: a small Wenshan family, a neighbour, institutions.

Every person here is invented; ID numbers are generated with valid GB 11643 check digits.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy.orm import Session

from app.security.id_number import make_id_number
from app.security.pii import PiiCipher
from app.services.registry import load_registry
from app.services.staff_accounts import create_staff
from app.timefmt import iso

OWNER = make_id_number("532621", date(1980, 1, 1), 123)
SPOUSE = make_id_number("532621", date(1982, 5, 20), 224)
CHILD = make_id_number("532621", date(2015, 9, 1), 135)
PARENT = make_id_number("532621", date(1952, 3, 8), 111)
NEIGHBOUR = make_id_number("532601", date(1975, 11, 11), 317)
COUSIN_ZIBO = make_id_number("370302", date(1990, 7, 7), 452)
RETIRED_INACTIVE = make_id_number("532622", date(1948, 2, 2), 561)

DEMO_INSTITUTION_SECRET = "demo-secret-H5326001-not-for-production"
# Reserved mobile numbers (R21); the child and the inactive person have none on file.
DEMO_PHONES = {OWNER: "13800001234", SPOUSE: "13800002222", PARENT: "13900003333", NEIGHBOUR: "13700005555",
               COUSIN_ZIBO: "15000006666"}


def demo_registry(as_of: datetime | None = None) -> dict[str, Any]:
    """The demo registry file, as ``load-registry`` takes it: a snapshot taken at ``as_of`` (default now)."""
    def person(number: str, name: str, card: str, kind: str, region: str, status: str = "active") -> dict:
        row = {"id_number": number, "name": name, "social_card_no": card, "insurance_type": kind,
               "region_code": region, "status": status}
        if number in DEMO_PHONES:
            row["phone"] = DEMO_PHONES[number]  # R21: the reserved mobile number (预留手机号)
        return row

    return {
        "as_of": iso(as_of or datetime.now(UTC)),
        "persons": [
            person(OWNER, "张伟", "M53262100000001", "employee", "532621"),
            person(SPOUSE, "李娜", "M53262100000002", "employee", "532621"),
            person(CHILD, "张小明", "M53262100000003", "resident", "532621"),
            person(PARENT, "张建国", "M53262100000004", "resident", "532621"),
            person(NEIGHBOUR, "王芳", "M53260100000005", "employee", "532601"),
            person(COUSIN_ZIBO, "刘洋", "M37030200000006", "resident", "370302"),
            person(RETIRED_INACTIVE, "赵敏", "M53262200000007", "resident", "532622", "inactive"),
        ],
        "accounts": [
            {"id_number": OWNER, "balance_fen": 350000},
            {"id_number": SPOUSE, "balance_fen": 120000},
            {"id_number": NEIGHBOUR, "balance_fen": 80000},
        ],
        "households": [
            {"a": OWNER, "b": SPOUSE, "relationship": "spouse"},
            {"a": OWNER, "b": CHILD, "relationship": "child"},
            {"a": OWNER, "b": PARENT, "relationship": "parent"},
            {"a": SPOUSE, "b": CHILD, "relationship": "child"},
        ],
        "institutions": [
            {"code": "H5326001", "name": "文山州人民医院", "kind": "hospital", "region_code": "532601",
             "designated": True, "api_secret": DEMO_INSTITUTION_SECRET},
            {"code": "P5326002", "name": "文山康民大药房", "kind": "pharmacy", "region_code": "532621",
             "designated": True, "api_secret": "demo-secret-P5326002-not-for-production"},
            {"code": "H3703001", "name": "淄博市中心医院", "kind": "hospital", "region_code": "370302",
             "designated": True, "api_secret": "demo-secret-H3703001-not-for-production"},
            {"code": "C5326009", "name": "文山美容诊所", "kind": "clinic", "region_code": "532601",
             "designated": False, "api_secret": "demo-secret-C5326009-not-for-production"},
        ],
    }


# The console sign-in of the demo staff (issue 12). Published on purpose: a demo, never production.
DEMO_CONSOLE_PASSWORD = "demo-console-2026"
DEMO_TOTP_SECRETS = {"window1": "DEMOWINDOWSTAFFTOTPKEYAAAAAAAAAA", "admin1": "DEMOADMINSTAFFTOTPKEYAAAAAAAAAAA",
                     "auditor1": "DEMOAUDITORSTAFFTOTPKEYAAAAAAAAA"}


def totp_now(username: str) -> str:
    """The demo staff member's current console code: ``python -c 'from app.demo import totp_now; …'``."""
    import pyotp

    return pyotp.TOTP(DEMO_TOTP_SECRETS[username]).now()


def seed_demo(session: Session, pii: PiiCipher, now: datetime) -> dict[str, str]:
    """Load the demo registry and create one staff user per role, each with a console password
    and TOTP secret; return their new API tokens."""
    from app.services.console_auth import set_console_credentials

    load_registry(session, pii, demo_registry(now), now)
    tokens = {name: create_staff(session, name, role, now)
              for name, role in (("window1", "window"), ("admin1", "admin"), ("auditor1", "auditor"))}
    for name in tokens:
        set_console_credentials(session, pii, name, DEMO_CONSOLE_PASSWORD, now, totp_secret=DEMO_TOTP_SECRETS[name])
    return tokens
