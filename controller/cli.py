"""Placeholder command line; replaced by the CLI owner."""

from __future__ import annotations


def main() -> int:
    return 0
