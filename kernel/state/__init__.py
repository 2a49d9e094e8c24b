"""Kernel state kept for others: the journal, the audit log, the event bus."""
