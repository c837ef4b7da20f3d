"""Plumbing below every layer: atomic file writes, run identity files, process-group helpers, Hub ids."""
