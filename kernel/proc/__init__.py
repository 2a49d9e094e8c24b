"""Processes: the process table, capabilities, quotas, mailboxes, programs."""
