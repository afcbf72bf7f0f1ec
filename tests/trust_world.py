"""The property-based trust suite's world (issue 9): generated layouts, specs and attacker moves.

Shared by ``tests/test_trust_property.py`` (bounded, CI) and ``bench/trust_property.py`` (long runs).
Each example builds a fresh directory ``W`` with ``allowed/`` (the allowed host path), ``outside/``
(beyond every root), ``mnt/`` (the mount base), ``state/`` and ``attacker/``; generates directories,
files and symlinks (inside the root and across roots) and a set of localfs connections and DomainMonitors
(hostPath and connectionRef, so probe files land in the root and through the localfs links); then runs
``apply``/``delete``/``delete --force``/``status`` and their dry runs through :mod:`controller.engine`
(``hoststorage apply -f``'s code path, in process) with attacker moves in between: a symlink, a file or
a directory put at a name (the probe file's name, the localfs link's name, a target directory, a layout
name), a tmpfs or a file bind mount on top of it, the name moved away.

After every step the invariant is checked: every object hoststorage did not create is unchanged, by
(device, inode, type, mode, content hash or link target); nothing new appears outside ``allowed/``,
``mnt/`` and ``state/``; every mount under ``W`` is still there; no result is an internal error. A
status or dry-run step must change nothing at all. Every attacker mount is removed afterwards.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import hashlib
import os
import pathlib
import shutil
import stat
import subprocess
import tempfile
from typing import Any

from hypothesis import strategies as st

from controller import engine, manifests, settings
from hostlib import checker, mounts

API = "hoststorage.io/v1alpha1"
NODE = "node-p"
VICTIM = b"QFI\xfb a VM's disk image: hoststorage must never touch it\n" * 64

LAYOUT_NAMES = ["d0", "d1", "d0/sub", "images", "lnk-in", "lnk-out", "lnk-file", "lnk-dir-in"]
VICTIMS = ["image-in-root", "file-outside", "dir-outside", "dir-in-root"]
MOVES = ["link", "file", "dir", "mount", "aside"]
CATEGORIES = ["probe", "link", "target", "layout"]
HS_STEPS = ["apply", "delete", "force", "status", "apply-dry", "delete-dry"]


@dataclasses.dataclass(frozen=True)
class Attack:
    move: str
    category: str
    which: int
    victim: str


@dataclasses.dataclass(frozen=True)
class Scenario:
    layout: tuple[tuple[str, str], ...]
    """(name under allowed/, kind): dir, file, link-in, link-out, link-file."""
    connections: tuple[str, ...]
    """localfs connection paths (names under allowed/)."""
    monitors: tuple[tuple[str, str], ...]
    """(hostPath name under allowed/ | connection name, "host" | "conn")."""
    steps: tuple[str | Attack, ...]


attacks = st.builds(
    Attack,
    move=st.sampled_from(MOVES),
    # The interesting names first: Hypothesis shrinks toward the first element.
    category=st.sampled_from(["probe", "probe", "link", "link", "target", "layout"]),
    which=st.integers(0, 3),
    victim=st.sampled_from(VICTIMS),
)


@st.composite
def scenarios(draw: Any) -> Scenario:
    kinds = st.sampled_from(["dir", "dir", "file", "link-in", "link-out", "link-file"])
    layout = [("d0", "dir"), ("d1", "dir")]
    for name in draw(st.lists(st.sampled_from(LAYOUT_NAMES[2:]), unique=True, max_size=4)):
        layout.append((name, draw(kinds) if name != "d0/sub" else "dir"))
    names = [n for n, _ in layout]
    conns = tuple(draw(st.lists(st.sampled_from(names), unique=True, min_size=0, max_size=2)))
    mon_targets = st.one_of(
        st.tuples(st.sampled_from(names), st.just("host")),
        *(
            [st.tuples(st.sampled_from([f"c{i}" for i in range(len(conns))]), st.just("conn"))]
            if conns
            else []
        ),
    )
    monitors = tuple(draw(st.lists(mon_targets, unique=True, min_size=1, max_size=3)))
    pre = draw(st.lists(attacks, max_size=2))
    rest = draw(st.lists(st.one_of(st.sampled_from(HS_STEPS), attacks), min_size=2, max_size=8))
    return Scenario(tuple(layout), conns, monitors, (*pre, "apply", *rest, "delete", "force"))


# ---------------------------------------------------------------------------------------- snapshot

Fingerprint = tuple[int, int, str, int, str]


def fingerprint(path: str) -> Fingerprint:
    st_ = os.lstat(path)
    mode = st_.st_mode
    if stat.S_ISLNK(mode):
        kind, what = "link", os.readlink(path)
    elif stat.S_ISREG(mode):
        with open(path, "rb") as f:
            kind, what = "file", hashlib.sha256(f.read()).hexdigest()
    elif stat.S_ISDIR(mode):
        kind, what = "dir", ""
    else:
        kind, what = "other", ""
    return (st_.st_dev, st_.st_ino, kind, stat.S_IMODE(mode), what)


def snapshot(world: pathlib.Path) -> dict[str, Fingerprint]:
    """Every name under ``world`` (the state dir left out: hoststorage's own), links never followed."""
    out: dict[str, Fingerprint] = {}
    for dirpath, dirnames, filenames in os.walk(world):
        rel_dir = os.path.relpath(dirpath, world)
        if rel_dir == "state":
            dirnames[:] = []
            continue
        for n in dirnames + filenames:
            p = os.path.join(dirpath, n)
            with contextlib.suppress(FileNotFoundError):
                out[os.path.relpath(p, world)] = fingerprint(p)
    return out


def mount_table(world: pathlib.Path) -> list[tuple[int, str, str, str]]:
    return sorted(
        (r.mount_id, r.target, r.source, r.fstype) for r in mounts.mounts_under(str(world))
    )


def ident(fp: Fingerprint) -> tuple[int, int, str]:
    return (fp[0], fp[1], fp[2])


# ---------------------------------------------------------------------------------------- the world


class Violation(AssertionError):
    pass


class World:
    def __init__(self, base: str, scenario: Scenario, hits: collections.Counter[str]) -> None:
        self.w = pathlib.Path(tempfile.mkdtemp(prefix="tp-", dir=base))
        self.sc = scenario
        self.hits = hits
        self.allowed = self.w / "allowed"
        for d in ("allowed", "outside/dir", "mnt", "attacker"):
            (self.w / d).mkdir(parents=True)
        (self.allowed / "images").mkdir()
        (self.allowed / "images" / "vm1.qcow2").write_bytes(VICTIM)
        (self.w / "outside" / "vm2.img").write_bytes(VICTIM)
        (self.w / "outside" / "dir" / "data.img").write_bytes(VICTIM)
        self.moved = 0
        for name, kind in scenario.layout:
            p = self.allowed / name
            if p.exists() or p.is_symlink():
                continue
            p.parent.mkdir(parents=True, exist_ok=True)
            if kind == "dir":
                p.mkdir()
            elif kind == "file":
                p.write_bytes(b"someone else's file " + name.encode())
            elif kind == "link-in":
                p.symlink_to(self.allowed / "d1")
            elif kind == "link-out":
                p.symlink_to(self.w / "outside" / "dir")
            else:
                p.symlink_to(self.allowed / "images" / "vm1.qcow2")
        self.conf = settings.Settings(
            state_dir=str(self.w / "state"), mount_base=str(self.w / "mnt"),
            allowed_host_paths=(str(self.allowed),), node_name=NODE, qemu_user="none",
            command_timeout=20, lock_timeout=20,
        )  # fmt: skip
        self.docs = self._docs()
        self.ours: set[tuple[int, int, str]] = set()

    # ---- specs and their interesting names

    def _docs(self) -> list[manifests.Document]:
        docs = []
        for i, path in enumerate(self.sc.connections):
            spec = {"type": "localfs", "localfs": {"path": str(self.allowed / path)}}
            docs.append({"kind": "StorageConnection", "name": f"c{i}", "spec": spec})
        for i, (target, how) in enumerate(self.sc.monitors):
            tgt: dict[str, Any] = {"connectionRef": {"name": target}}
            if how == "host":
                tgt = {"hostPath": str(self.allowed / target)}
            spec = {"target": tgt, "intervalSeconds": 5}
            docs.append({"kind": "DomainMonitor", "name": f"m{i}", "spec": spec})
        return [
            manifests.Document(f"gen#{n}", {"apiVersion": API, "kind": d["kind"],
                                             "metadata": {"name": d["name"]}, "spec": d["spec"]})
            for n, d in enumerate(docs, start=1)
        ]  # fmt: skip

    def link_names(self) -> list[str]:
        base = str(self.w / "mnt")
        return [mounts.local_link_for(base, str(self.allowed / p)) for p in self.sc.connections]

    def target_dirs(self) -> list[str]:
        out = []
        for target, how in self.sc.monitors:
            if how == "host":
                out.append(str(self.allowed / target))
            else:
                out.append(self.link_names()[int(target[1:])])
        out += [str(self.allowed / p) for p in self.sc.connections]
        return out

    def names(self, category: str) -> list[str]:
        if category == "probe":
            return [os.path.join(t, checker.probe_name(NODE)) for t in self.target_dirs()]
        if category == "link":
            return self.link_names()
        if category == "target":
            return self.target_dirs()
        return [str(self.allowed / n) for n, _ in self.sc.layout]

    # ---- attacker moves (they follow links freely: the attacker is not hoststorage)

    def _victim(self, victim: str) -> pathlib.Path:
        return {
            "image-in-root": self.allowed / "images" / "vm1.qcow2",
            "file-outside": self.w / "outside" / "vm2.img",
            "dir-outside": self.w / "outside" / "dir",
            "dir-in-root": self.allowed / "d1",
        }[victim]

    def _aside(self, p: str) -> None:
        self.moved += 1
        os.rename(p, self.w / "attacker" / f"moved-{self.moved}")

    def attack(self, a: Attack) -> None:
        names = self.names(a.category)
        if not names:
            return
        p = names[a.which % len(names)]
        if not os.path.isdir(os.path.dirname(p)) or not os.path.realpath(p).startswith(str(self.w) + "/"):
            return
        exists = os.path.lexists(p)
        try:
            if a.move == "mount":
                self._mount_on(p, exists)
            elif a.move == "aside":
                if not exists:
                    return
                self._aside(p)
            else:
                # Made first under a new name, then renamed over the old one: the new object never
                # reuses the inode of what it replaces, so the snapshot tells them apart.
                tmp = str(self.w / "attacker" / f"new-{self.moved}")
                self.moved += 1
                if a.move == "link":
                    os.symlink(self._victim(a.victim), tmp)
                elif a.move == "file":
                    pathlib.Path(tmp).write_bytes(b"the attacker's file")
                else:
                    os.mkdir(tmp)
                if exists and (a.move == "dir" or (os.path.isdir(p) and not os.path.islink(p))):
                    self._aside(p)
                os.rename(tmp, p)
        except OSError:
            return  # EBUSY on a mount point, EXDEV across mounts: the move did not happen
        self.hits[f"{a.move}@{a.category}"] += 1

    def _mount_on(self, p: str, exists: bool) -> None:
        if not exists:
            os.mkdir(p)
        if os.path.islink(p):
            raise OSError("not mounting through a link")
        if os.path.isdir(p):
            argv = ["mount", "-t", "tmpfs", "-o", "size=1m", "attacker", p]
        else:
            src = self.w / "attacker" / f"bind-{self.moved}"
            self.moved += 1
            src.write_bytes(b"the attacker's bind-mounted file")
            argv = ["mount", "--bind", str(src), p]
        if subprocess.run(argv, capture_output=True, timeout=30, check=False).returncode != 0:
            raise OSError(f"{argv} failed")

    # ---- hoststorage's steps and the invariant

    def step(self, what: str) -> None:
        before, table = snapshot(self.w), mount_table(self.w)
        if what == "status":
            results = engine.observe_all(self.conf)
        elif what.startswith("apply"):
            results = engine.apply(self.docs, self.conf, dry_run=what == "apply-dry").results
        else:
            results = engine.delete(
                self.docs, self.conf, force=what == "force", dry_run=what == "delete-dry"
            ).results
        after = snapshot(self.w)
        self.hits[f"hs:{what}"] += 1
        for r in results:
            self.hits[f"result:{r.kind}:{r.phase}:{r.reason}"] += 1
            if r.reason == "InternalError":
                raise Violation(f"{what}: {r.kind}/{r.name}: internal error: {r.message}")
        if mount_table(self.w) != table:
            raise Violation(f"{what}: the mount table under W changed: {table} -> {mount_table(self.w)}")
        if what in ("status", "apply-dry", "delete-dry") and after != before:
            raise Violation(f"{what} changed something: {diff(before, after)}")
        for key, fp in before.items():
            if ident(fp) in self.ours:
                continue
            if after.get(key) != fp:
                raise Violation(
                    f"{what}: {key} is not hoststorage's and was {'changed' if key in after else 'removed'}: "
                    f"{fp} -> {after.get(key)}"
                )
        for key, fp in after.items():
            if before.get(key) == fp:
                continue
            if key != "state" and not key.startswith(("allowed/", "mnt/")):
                raise Violation(f"{what}: {key} was created outside the roots: {fp}")
            self.ours.add(ident(fp))
            self.hits[f"created:{'probe' if checker.PROBE_NAME in key else 'link'}"] += 1

    def run(self) -> None:
        for s in self.sc.steps:
            if isinstance(s, Attack):
                self.attack(s)
            else:
                self.step(s)

    def close(self) -> None:
        for _ in range(10):  # stacked attacker mounts: deepest and topmost first, until none is left
            left = mounts.mounts_under(str(self.w))
            if not left:
                break
            for r in sorted(left, key=lambda r: (-len(r.target), -r.mount_id)):
                subprocess.run(["umount", "--no-canonicalize", "-l", r.target], capture_output=True,
                               timeout=30, check=False)  # fmt: skip
        if mounts.mounts_under(str(self.w)):
            raise RuntimeError(f"could not unmount everything under {self.w}")
        shutil.rmtree(self.w)


def diff(a: dict[str, Fingerprint], b: dict[str, Fingerprint]) -> list[str]:
    return [f"{k}: {a.get(k)} -> {b.get(k)}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)][:10]


def run_scenario(base: str, scenario: Scenario, hits: collections.Counter[str]) -> None:
    world = World(base, scenario, hits)
    try:
        world.run()
    finally:
        world.close()
    hits["examples"] += 1
