"""One stand-in for :class:`hostlib.commands.Runner` where a test must not run host tools.

It has the real call signature (pinned by ``test_commands.py``), records every argv and its declared
secrets, takes its answer from :meth:`FakeRunner.answer`, and fails the way the real runner does:
``CommandError`` when ``check`` is set and the exit code is not 0, a ``Result`` otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from hostlib import commands


class FakeRunner:
    def __init__(self) -> None:
        self.calls: list[tuple[str, ...]] = []
        self.secrets: list[tuple[str, ...]] = []

    def answer(self, argv: tuple[str, ...], secrets: tuple[str, ...]) -> tuple[int, str, str]:
        """(exit code, stdout, stderr) for ``argv``; subclasses script it."""
        return 0, "", ""

    def __call__(
        self,
        argv: Sequence[str],
        *,
        timeout: float,
        secrets: Sequence[str] = (),
        input_text: str | None = None,
        check: bool = True,
        env: Mapping[str, str] | None = None,
    ) -> commands.Result:
        argv = tuple(argv)
        assert timeout > 0
        self.calls.append(argv)
        self.secrets.append(tuple(secrets))
        rc, stdout, stderr = self.answer(argv, tuple(secrets))
        if check and rc != 0:
            raise commands.CommandError(argv, rc, stderr)
        return commands.Result(argv, rc, stdout, stderr, 0.0)
