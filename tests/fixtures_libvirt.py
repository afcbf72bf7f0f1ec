"""Placeholder: filled by the module owner."""
