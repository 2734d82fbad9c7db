"""Numbered revisions, applied in order: ``0001_initial`` first."""
