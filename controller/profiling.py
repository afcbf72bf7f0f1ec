"""CPU (cProfile) and memory (tracemalloc) profiles on demand (DESIGN.md start-up step 2), off by default."""

from __future__ import annotations

import cProfile
import logging
import os
import tracemalloc

log = logging.getLogger(__name__)


class Profiler:
    """Profiles into ``directory`` (nothing when it is empty); :meth:`write` on exit and SIGUSR1."""

    def __init__(self, directory: str, name: str) -> None:
        self.directory = directory
        self.name = name
        self.cpu: cProfile.Profile | None = None
        if directory:
            os.makedirs(directory, exist_ok=True)
            tracemalloc.start(10)
            self.cpu = cProfile.Profile()
            self.cpu.enable()

    def write(self) -> None:
        if self.cpu is None:
            return
        base = os.path.join(self.directory, f"{self.name}-{os.getpid()}")
        self.cpu.dump_stats(base + ".prof")
        top = tracemalloc.take_snapshot().statistics("lineno")[:50]
        with open(base + ".mem.txt", "w", encoding="utf-8") as f:
            f.writelines(f"{stat}\n" for stat in top)
        log.warning("profiles written to %s.prof and %s.mem.txt", base, base)
