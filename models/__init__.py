"""SQLAlchemy 2 typed models. Importing this package registers every table on ``Base.metadata``."""

from models.audit import AuditEvent
from models.base import Base, utcnow
from models.binding import (
    LIVE_BINDING_STATES,
    AuthorizationEvent,
    Binding,
    BindingDocument,
    ChronicCertification,
    Document,
    OffsiteFiling,
    Pledge,
    Suspension,
)
from models.console import ConsoleLockout, ConsoleSession
from models.identity import AuthToken, IdentityLinkCode, PhoneProof, StaffUser, User
from models.money import (
    BindingUsage,
    CapUsage,
    InstitutionNonce,
    Journal,
    LedgerEntry,
    Payment,
    Refund,
    RefundPart,
    Settlement,
    Voucher,
)
from models.notice import Consent, Delivery, Notice
from models.registry import Account, Household, Institution, Person

__all__ = [
    "LIVE_BINDING_STATES", "Account", "AuditEvent", "AuthToken", "AuthorizationEvent", "Base",
    "Binding", "BindingDocument", "BindingUsage", "CapUsage", "ChronicCertification", "Consent",
    "Delivery", "Document", "Household", "Institution", "InstitutionNonce", "Journal", "LedgerEntry",
    "Notice", "OffsiteFiling", "Payment", "Person", "Pledge", "Refund", "RefundPart", "Settlement",
    "StaffUser", "Suspension", "User", "Voucher", "utcnow", "IdentityLinkCode", "PhoneProof",
    "ConsoleLockout", "ConsoleSession",
]
