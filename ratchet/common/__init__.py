"""Shared plumbing for ratchet: configuration, errors, atomic file writes, logging."""
