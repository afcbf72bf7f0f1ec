"""Untrusted manifests in local mode (issue 9, class 7): the loader's bounds and what a user sees.

The loader (``controller.manifests``) refuses a bad document with an InvalidSpec naming ``FILE#N`` and
the field, and loads the others. Every bound is pinned at its boundary (the limit accepted, one more
refused) for each loader this PyYAML offers (pure Python, and libyaml when present), so an off-by-one
or a loader that skips a check fails here. The real exploits (a 600-byte alias bomb, duplicate keys,
deep nesting, mixed-type keys next to a valid object) then go through the installed ``hoststorage``
command: one line per refused document, exit 2, no traceback, and the valid object applied.
"""

from __future__ import annotations

import importlib.util
import json
import os
import pathlib
import resource
import subprocess
import sys
import textwrap
import types
from collections.abc import Callable
from typing import Any

import pytest

from controller import cli, local, manifests
from hostlib import errors

HOSTSTORAGE = str(pathlib.Path(sys.executable).parent / "hoststorage")
ROOT = pathlib.Path(__file__).resolve().parent.parent
QEMU_USER = "HOSTSTORAGE_QEMU_USER"  # conftest turns qemu's access check off for test mount bases

LOADERS = sorted(manifests.LOADERS)


@pytest.fixture(params=LOADERS)
def load(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> Callable[[str], manifests.Manifests]:
    loader_class = manifests.LOADERS[request.param]

    def _load(text: str) -> manifests.Manifests:
        path = tmp_path / "m.yaml"
        path.write_text(text)
        return manifests.load([str(path)], loader_class=loader_class)

    return _load


def objs(loaded: manifests.Manifests) -> list[tuple[str, Any]]:
    return [(d.source.rsplit("#", 1)[1], d.obj) for d in loaded.documents]


def why(loaded: manifests.Manifests) -> list[tuple[str, str]]:
    return [(r.source.rsplit("#", 1)[1], r.error.message) for r in loaded.refused]


def _bench() -> types.ModuleType:
    spec = importlib.util.spec_from_file_location("bench_manifests", ROOT / "bench" / "manifests.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


BENCH = _bench()
bomb: Callable[[], str] = BENCH.bomb
"""The 600-byte billion-laughs bomb, from the bench that measures it."""


# ------------------------------------------------------------------------------------------- bounds


def test_aliases_up_to_the_bound_are_accepted_one_more_is_refused(load: Any) -> None:
    n = manifests.MAX_ALIASES
    ok = load("v: &x 1\nl: [" + ", ".join(["*x"] * n) + "]\n")
    assert why(ok) == [] and objs(ok)[0][1]["l"] == [1] * n
    over = load("v: &x 1\nl: [" + ", ".join(["*x"] * (n + 1)) + "]\n---\nnext: 1\n")
    assert why(over) == [("1", f"l[{n}]: more than {n} aliases in one document at line 2")]
    assert objs(over) == [("2", {"next": 1})]


def test_alias_expansion_up_to_the_bound_is_accepted_one_more_is_refused(load: Any) -> None:
    # One alias to a scalar of L characters repeats 1 + L (the node and its characters).
    limit = manifests.MAX_ALIAS_EXPANSION
    ok = load(f"v: &x {'a' * (limit - 1)}\nw: *x\n")
    assert why(ok) == [] and len(objs(ok)[0][1]["w"]) == limit - 1
    over = load(f"v: &x {'a' * limit}\nw: *x\n")
    assert why(over) == [
        ("1", f"w: aliases repeat more than {limit} nodes and characters (an alias bomb?) at line 2")
    ]


def test_the_alias_bomb_is_refused_at_its_first_levels(load: Any) -> None:
    loaded = load(bomb() + "---\nafter: 1\n")
    [(doc, message)] = why(loaded)
    assert doc == "1" and "aliases repeat more than" in message
    assert objs(loaded) == [("2", {"after": 1})]


@pytest.mark.parametrize("text", ["a: &x [*x]\n", "a: &x {b: {c: *x}}\n"], ids=["sequence", "mapping"])
def test_an_alias_to_a_node_that_contains_it_is_refused(load: Any, text: str) -> None:
    [(_, message)] = why(load(text))
    assert "alias 'x' refers to a node that contains it" in message


@pytest.mark.parametrize("style", ["flow-sequence", "flow-mapping", "block-mapping"])
def test_nesting_up_to_the_bound_is_accepted_one_more_is_refused(load: Any, style: str) -> None:
    def nested(depth: int) -> str:  # `depth` collections in all, the document's mapping included
        if style == "flow-sequence":
            return "a: " + "[" * (depth - 1) + "]" * (depth - 1) + "\n"
        if style == "flow-mapping":
            return "a: " + "{a: " * (depth - 1) + "1" + "}" * (depth - 1) + "\n"
        return "".join("  " * i + "a:\n" for i in range(depth)) + "  " * depth + "b: 1\n"

    deep = manifests.MAX_DEPTH
    if style == "block-mapping":  # the innermost mapping holds `b: 1`, so one level more
        deep -= 1
    assert why(load(nested(deep))) == []
    [(_, message)] = why(load(nested(deep + 1)))
    assert f"collections are nested more than {manifests.MAX_DEPTH} deep" in message


def test_deep_nesting_far_beyond_the_bound_is_refused_without_recursion(load: Any) -> None:
    loaded = load("a: " + "[" * 100_000 + "]" * 100_000 + "\n---\nb: 1\n")
    assert [d for d, _ in why(loaded)] == ["1"] and objs(loaded) == [("2", {"b": 1})]


def test_numbers_up_to_the_bound_are_accepted_one_more_is_refused(load: Any) -> None:
    n = manifests.MAX_NUMBER_CHARS
    assert objs(load(f"n: {'1' * n}\n")) == [("1", {"n": int("1" * n)})]
    assert why(load(f"n: {'1' * (n + 1)}\n")) == [("1", f"n: a number longer than {n} characters at line 1")]
    # A long sexagesimal number would cost quadratic time to convert; a quoted one is only a string.
    assert [m for _, m in why(load("n: 1:" + ":".join(["1"] * 100_000) + "\n"))] == [
        f"n: a number longer than {n} characters at line 1"
    ]
    assert objs(load(f"n: '{'1' * 1000}'\n")) == [("1", {"n": "1" * 1000})]


def test_duplicate_keys_are_refused_naming_the_field(load: Any) -> None:
    loaded = load("kind: A\nmetadata:\n  name: a\n  'name': b\n---\nkind: B\nkind: C\n---\nkind: ok\n")
    assert why(loaded) == [
        ("1", "metadata: duplicate key 'name' at line 4"),
        ("2", "duplicate key 'kind' at line 7"),
    ]
    assert objs(loaded) == [("3", {"kind": "ok"})]


def test_a_merge_key_may_be_overridden_that_is_no_duplicate(load: Any) -> None:
    loaded = load("base: &b {k: v, j: 1}\nuse:\n  <<: *b\n  k: w\n")
    assert why(loaded) == [] and objs(loaded)[0][1]["use"] == {"k": "w", "j": 1}


@pytest.mark.parametrize(
    ("key", "read_as"),
    [("1", "'1' is read as int"), ("true", "'true' is read as bool"), ("~", "'~' is read as null"),
     ("1.5", "'1.5' is read as float"), ("!!int '7'", "'7' is read as int")],
)  # fmt: skip
def test_keys_must_be_strings(load: Any, key: str, read_as: str) -> None:
    loaded = load(f"metadata: {{name: x, {key}: b}}\n---\nok: 1\n")
    assert why(loaded) == [("1", f"metadata: key {read_as}, not a string (quote it) at line 1")]
    assert objs(loaded) == [("2", {"ok": 1})]
    assert objs(load("metadata: {name: x, '1': b}\n")) == [("1", {"metadata": {"name": "x", "1": "b"}})]


@pytest.mark.parametrize("text", ["{[1]: 2}\n", "? {a: 1}\n: 2\n"], ids=["flow", "complex-key"])
def test_a_collection_is_never_a_key(load: Any, text: str) -> None:
    loaded = load(text + "---\nok: 1\n")
    [(doc, message)] = why(loaded)
    assert doc == "1" and message.startswith("a key must be a string, not a collection at line ")
    assert objs(loaded) == [("2", {"ok": 1})]


def test_a_syntax_error_refuses_its_own_document_only(load: Any) -> None:
    loaded = load("a: 1\n---\nb: [1,\n---\nc: 3\n---\nd: 'open\n---\ne: 5\n")
    assert objs(loaded) == [("1", {"a": 1}), ("3", {"c": 3}), ("5", {"e": 5})]
    assert [(d, m.split(":")[0]) for d, m in why(loaded)] == [
        ("2", "invalid YAML at line 4"),
        ("4", "invalid YAML at line 8"),
    ]


def test_a_file_with_directives_is_not_cut_so_an_error_refuses_the_rest_of_it(load: Any) -> None:
    loaded = load("%YAML 1.1\n---\na: 1\n---\nb: [1,\n---\nc: 3\n")
    assert objs(loaded) == [("1", {"a": 1})]
    [(doc, message)] = why(loaded)
    assert doc == "2" and message.endswith("; the rest of this file (it has % directives, so it is read in "
                                           "one piece) was not read")  # fmt: skip
    loaded = load("%YAML 1.1\n---\na: 1\n...\n%YAML 1.1\n---\nb: 2\n")
    assert objs(loaded) == [("1", {"a": 1}), ("2", {"b": 2})] and why(loaded) == []


@pytest.mark.parametrize("brk", ["\n", "\r\n", "\r", "\u2028"], ids=["lf", "crlf", "cr", "line-separator"])
def test_documents_are_cut_after_every_yaml_line_break(load: Any, brk: str) -> None:
    loaded = load(brk.join(["a: 1", "---", "b: [1,", "---", "c: 3", ""]))
    assert objs(loaded) == [("1", {"a": 1}), ("3", {"c": 3})]
    assert [(d, m.split(":")[0]) for d, m in why(loaded)] == [("2", "invalid YAML at line 4")]


def test_other_document_problems_are_refused_one_by_one(load: Any) -> None:
    loaded = load(
        "a: \x07\n---\nb: *nope\n---\nc: !!python/object:os.system x\n---\nd: 2001-13-01\n---\n"
        "- a list\n---\nkind: List\nitems: [{kind: A}, 5]\n---\nfine: 1\n"
    )
    assert why(loaded) == [
        ("1", "invalid YAML at line 1: character #x0007: " + why(loaded)[0][1].split(": ", 2)[2]),
        ("2", "invalid YAML at line 3: found undefined alias 'nope'"),
        ("3", "could not determine a constructor for the tag 'tag:yaml.org,2002:python/object:os.system' "
              "at line 5"),
        ("4", "unreadable value at line 7: ValueError('month must be in 1..12')"),
        ("5", "a document must be a mapping (an object), got list"),
        ("6.items[2]", "an item must be a mapping"),
    ]  # fmt: skip
    assert objs(loaded) == [("6.items[1]", {"kind": "A"}), ("7", {"fine": 1})]


def test_documents_up_to_the_bound_are_read_one_more_stops_the_run(tmp_path: pathlib.Path) -> None:
    n = manifests.MAX_DOCUMENTS
    path = tmp_path / "many.yaml"
    path.write_text("---\n" * n + "a: 1\n")  # n documents: n - 1 empty ones, then {a: 1}
    assert len(manifests.load([str(path)]).documents) == 1
    path.write_text("---\n" * (n + 1) + "a: 1\n")
    with pytest.raises(manifests.InputError, match=f"more than {n} documents"):
        manifests.load([str(path)])


def test_field_paths_bound_every_key() -> None:
    assert manifests.field_path(["spec", "nfs", "options", 1]) == "spec.nfs.options[1]"
    assert manifests.field_path(["metadata", "labels", "app.kubernetes.io/name"]) == (
        "metadata.labels['app.kubernetes.io/name']"
    )
    assert len(manifests.field_path(["data", "k" * 100_000])) <= len("data[]") + errors.SHOWN_LIMIT


# ------------------------------------------------------------------------------------ bounded messages


def test_shown_is_bounded_for_any_value() -> None:
    laughs: Any = ["lol"] * 9
    for _ in range(9):
        laughs = [laughs] * 9  # 9**10 strings if expanded; shared, so instant to build
    for value in (laughs, "x" * 10**6, b"y" * 10**6, 10**5000, {str(i): i for i in range(10**4)},
                  KeyError("k" * 10**6), object()):  # fmt: skip
        text = errors.shown(value)
        assert len(text) <= errors.SHOWN_LIMIT, text
    assert errors.shown("short") == "'short'"
    assert errors.shown(KeyError("k")) == "KeyError('k')"
    assert errors.shown(object()) == "<object>"
    assert errors.shown(None) == "None" and errors.shown(1.5) == "1.5"


def test_error_messages_are_bounded_as_a_backstop() -> None:
    limit = errors.MESSAGE_LIMIT
    assert errors.HostStorageError("m" * limit).message == "m" * limit
    clipped = errors.InvalidSpec("m" * limit, field="spec.x").message
    assert len(clipped) == limit and clipped.startswith("spec.x: m") and " ... " in clipped


# --------------------------------------------------------------------------------- bounded time, memory


@pytest.mark.parametrize("loader", LOADERS)
def test_the_alias_bomb_costs_milliseconds_and_a_few_mib(tmp_path: pathlib.Path, loader: str) -> None:
    """A guard, not a benchmark (bench/manifests.py prints the figures): a fresh process, loose bounds."""
    path = tmp_path / "bomb.yaml"
    path.write_text(bomb())
    seconds, peak_mib, outcome = BENCH.measure(path, loader)
    assert outcome == "0 loaded, 1 refused"
    assert seconds < 2.0 and peak_mib < 50, (seconds, peak_mib)


# ----------------------------------------------------------------------------------- through the CLI


def _limit_memory() -> None:
    # If a bound ever breaks, the command fails fast instead of taking the machine's memory.
    resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))


def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k == QEMU_USER or not k.startswith("HOSTSTORAGE_")}
    return subprocess.run([HOSTSTORAGE, *args], capture_output=True, text=True, input=stdin, env=env,
                          timeout=60, check=False, preexec_fn=_limit_memory)  # fmt: skip


def refused_lines(proc: subprocess.CompletedProcess[str]) -> list[str]:
    assert "Traceback" not in proc.stderr, proc.stderr
    return [ln for ln in proc.stderr.splitlines() if ln.startswith("hoststorage: error:")]


def localfs(name: str, path: pathlib.Path) -> str:
    return textwrap.dedent(f"""\
        apiVersion: hoststorage.io/v1alpha1
        kind: StorageConnection
        metadata: {{name: {name}}}
        spec: {{type: localfs, localfs: {{path: {path}}}}}
        """)


@pytest.fixture
def host_dirs(tmp_path: pathlib.Path, require_root: None) -> dict[str, pathlib.Path]:
    dirs = {"state": tmp_path / "state", "base": tmp_path / "mnt", "allowed": tmp_path / "allowed"}
    (dirs["allowed"] / "data").mkdir(parents=True)
    return dirs


def hs(
    dirs: dict[str, pathlib.Path], *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return run("--state-dir", str(dirs["state"]), "--mount-base", str(dirs["base"]),
               "--allowed-host-path", str(dirs["allowed"]), *args, stdin=stdin)  # fmt: skip


def ledger_names(dirs: dict[str, pathlib.Path]) -> list[str]:
    path = dirs["state"] / "ledger.json"
    return [e["name"] for e in json.loads(path.read_text())["entries"]] if path.exists() else []


@pytest.mark.parametrize(
    ("bad", "words"),
    [
        (bomb(), "x.e[2]: aliases repeat more than 100000 nodes and characters (an alias bomb?)"),
        (
            "kind: StorageConnection\nmetadata: {name: dup}\nmetadata: {name: dup2}\n",
            "duplicate key 'metadata'",
        ),
        ("kind: StorageConnection\nspec: " + "[" * 100 + "]" * 100 + "\n", "nested more than 64 deep"),
        ("kind: StorageConnection\nmetadata: {name: mixed, 1: b}\n", "metadata: key '1' is read as int"),
        ("kind: StorageConnection\nmetadata: {name: [unclosed\n", "invalid YAML at line"),
    ],
    ids=["alias-bomb", "duplicate-key", "deep-nesting", "mixed-type-keys", "syntax-error"],
)
def test_a_bad_document_next_to_a_valid_one(host_dirs: dict[str, pathlib.Path], bad: str, words: str) -> None:
    """The valid object is applied, the bad document is one line naming FILE#N and the field, exit 2."""
    good = localfs("good", host_dirs["allowed"] / "data")
    path = host_dirs["allowed"].parent / "m.yaml"
    path.write_text(bad + "---\n" + good)
    try:
        proc = hs(host_dirs, "apply", "-f", str(path), "-o", "json")
        [line] = refused_lines(proc)
        assert line.startswith(f"hoststorage: error: InvalidSpec: {path}#1: ") and words in line, line
        assert len(line) < 1000  # bounded: no expanded value in it
        assert proc.returncode == local.EXIT_BAD_INPUT
        [result] = json.loads(proc.stdout)
        assert (result["name"], result["ready"]) == ("good", True)
        link = result["connection"]["mountPoint"]
        assert ledger_names(host_dirs) == ["good"] and os.path.islink(link)
        # delete: the same refusal, the valid object torn down, exit 2 again
        gone = hs(host_dirs, "delete", "-f", str(path), "-o", "json")
        assert refused_lines(gone) == [line] and gone.returncode == local.EXIT_BAD_INPUT
        assert [(r["name"], r["phase"]) for r in json.loads(gone.stdout)] == [("good", "Detached")]
        assert ledger_names(host_dirs) == [] and not os.path.lexists(link)
    finally:
        hs(host_dirs, "delete", "-f", "-", stdin=good)


def test_a_bad_secret_is_refused_and_the_rest_still_runs(host_dirs: dict[str, pathlib.Path]) -> None:
    secret = "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\ndata: {password: 'not*base64!'}\n"
    good = localfs("good2", host_dirs["allowed"] / "data")
    try:
        proc = hs(host_dirs, "apply", "-f", "-", "-o", "json", stdin=secret + "---\n" + good)
        expected = "hoststorage: error: InvalidSpec: stdin#1: data.password: is not base64 of UTF-8 text"
        assert refused_lines(proc) == [expected]
        assert "not*base64!" not in proc.stdout + proc.stderr
        assert proc.returncode == local.EXIT_BAD_INPUT and ledger_names(host_dirs) == ["good2"]
    finally:
        hs(host_dirs, "delete", "-f", "-", stdin=good)


def test_an_unreadable_input_stops_the_run_before_anything_is_done(
    host_dirs: dict[str, pathlib.Path],
) -> None:
    good = host_dirs["allowed"].parent / "good.yaml"
    good.write_text(localfs("never", host_dirs["allowed"] / "data"))
    proc = hs(host_dirs, "apply", "-f", str(good), "-f", str(host_dirs["allowed"] / "missing.yaml"))
    assert refused_lines(proc) == [f"hoststorage: error: cannot read {host_dirs['allowed']}/missing.yaml: "
                                   "No such file or directory"]  # fmt: skip
    assert proc.returncode == 2 and not host_dirs["state"].exists()


BROKEN = """
import sys
from controller import cli, engine
def broken(*args, **kwargs):
    raise RuntimeError("boom " + "x" * 10_000)
engine.apply = broken
sys.exit(cli.main(sys.argv[1:]))
"""


@pytest.mark.parametrize("level", ["WARNING", "DEBUG"])
def test_an_unexpected_exception_is_one_line_exit_70(tmp_path: pathlib.Path, level: str) -> None:
    proc = subprocess.run([sys.executable, "-c", BROKEN, "--state-dir", str(tmp_path), "--log-level", level,
                           "apply", "-f", "-"], input="a: 1\n", capture_output=True, text=True, timeout=60,
                          check=False)  # fmt: skip
    assert proc.returncode == cli.EXIT_INTERNAL
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("hoststorage: internal error:")]
    assert len(lines) == 1 and lines[0].startswith("hoststorage: internal error: RuntimeError('boom xxx")
    assert len(lines[0]) <= len("hoststorage: internal error: ") + 500
    if level == "DEBUG":
        assert "Traceback" in proc.stderr and "in broken" in proc.stderr
    else:
        assert proc.stderr.splitlines() == lines
