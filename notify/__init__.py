"""Deduction notices (R15): the outbox written inside the money transaction, and their delivery."""
