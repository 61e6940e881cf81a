"""Blueprints for service-window staff (SPEC §5): window bindings, review, unbinding, suspensions,
look-ups and the audit log. Roles: window and admin act; admin alone suspends; auditor reads."""
