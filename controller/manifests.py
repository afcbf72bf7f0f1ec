"""Reading local-mode manifests: untrusted YAML in, plain documents and one refusal per bad document out.

``hoststorage apply|delete|monitor -f FILE`` hand whatever the files hold to a root process, so this
loader is the first trust boundary of local mode. Its rules:

- A file that cannot be used at all (unreadable, not UTF-8, over :data:`MAX_INPUT_BYTES`) or an input
  of more than :data:`MAX_DOCUMENTS` documents stops the run before anything is done: :class:`InputError`.
- Every other problem is one document's: that document is refused (:class:`Refused`, an
  ``InvalidSpec`` naming ``FILE#N``, the field and the line) and the others still load, as with
  ``kubectl apply``. The caller applies the good ones and exits non-zero.
- Documents are loaded one by one: the text is cut at its ``---`` lines, which are document boundaries
  whatever precedes them (YAML forbids ``---`` at the start of a line inside any scalar, and a flow
  collection left open ends there with an error), and anchors never cross documents. So a syntax error
  refuses its own document only and cannot change what the documents around it mean. A file with
  ``%`` directives is not cut (a directive belongs to the next document); there a syntax error also
  refuses the rest of that file.
- A document is composed under bounds checked as it is read, so a hostile one is refused in time and
  memory proportional to its size: at most :data:`MAX_ALIASES` aliases, whose targets together may
  repeat at most :data:`MAX_ALIAS_EXPANSION` nodes and characters (a billion-laughs bomb is refused at
  its first levels, never expanded), no alias to a node that contains it, collections nested at most
  :data:`MAX_DEPTH` deep, numbers of at most :data:`MAX_NUMBER_CHARS` characters (converting a long
  sexagesimal ``1:2:3:...`` is quadratic), keys that are strings and unique in their mapping (kubectl
  refuses duplicates; taking the last one silently hides a typo).
- No message embeds an input value except through :func:`hostlib.errors.shown`.

libyaml parses when PyYAML has it (six times faster than pure Python on a large input); composing, the
bounds and the construction (PyYAML's safe constructor: plain data only) are the same Python either way.
"""

from __future__ import annotations

import dataclasses
import re
import sys
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import yaml
import yaml.composer
import yaml.constructor
import yaml.events
import yaml.nodes
import yaml.parser
import yaml.reader
import yaml.resolver
import yaml.scanner

from hostlib import errors

# Bigger manifests are a mistake or an attack; a thousand objects fit in well under this.
MAX_INPUT_BYTES = 8 * 1024 * 1024
MAX_DOCUMENTS = 5000
"""Documents read (empty ones included) and objects loaded (``kind: List`` items included), per run."""
MAX_ALIASES = 64
"""Alias uses per document. Manifests rarely use any; a few shared blocks need a handful."""
MAX_ALIAS_EXPANSION = 100_000
"""Nodes plus scalar characters that the aliases of one document may repeat, counted as if expanded."""
MAX_DEPTH = 64
"""Collections nested in one document, the document itself included. Our kinds need about 8."""
MAX_NUMBER_CHARS = 64
"""Length of a scalar read as an integer or a float (a 64-bit number needs at most 25)."""

STR_TAG = "tag:yaml.org,2002:str"
MERGE_TAG = "tag:yaml.org,2002:merge"
_NUMBER_TAGS = ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float")
# A document start: '---' at the start of a line (after any of YAML's line breaks), then a blank or the end.
_SEPARATOR = re.compile(r"(?:^|(?<=[\r\x85\u2028\u2029]))---(?=[ \t\r\n\x85\u2028\u2029]|$)", re.MULTILINE)
_WHOLE = "it has % directives, so it is read in one piece"
_LINE_BREAK = re.compile(r"\r\n|[\r\n\x85\u2028\u2029]")
_DIRECTIVE = re.compile(r"^%", re.MULTILINE)
_PLAIN_KEY = re.compile(r"[A-Za-z0-9_-]+")


class InputError(Exception):
    """The input cannot be used at all (unreadable file, too big): one line, exit code 2, nothing done."""


@dataclasses.dataclass(frozen=True)
class Document:
    source: str
    """Where the object came from, ``FILE#N`` (N counts documents from 1)."""
    obj: Mapping[str, Any]


@dataclasses.dataclass(frozen=True)
class Refused:
    """A document that was not loaded, and why."""

    source: str
    error: errors.InvalidSpec

    def line(self) -> str:
        """The one line that reports it on stderr."""
        return f"hoststorage: error: {self.error.reason}: {self.source}: {self.error.message}"


@dataclasses.dataclass(frozen=True)
class Manifests:
    documents: list[Document]
    refused: list[Refused]


def report(refused: Sequence[Refused]) -> None:
    """One line on stderr per refused document."""
    for refusal in refused:
        print(refusal.line(), file=sys.stderr)


def field_path(parts: Sequence[str | int]) -> str:
    """``spec.nfs.options[1]``, ``metadata.labels['app.kubernetes.io/name']``; every key bounded."""
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _PLAIN_KEY.fullmatch(part) and len(part) <= errors.SHOWN_LIMIT:
            out += f".{part}" if out else part
        else:
            out += f"[{errors.shown(part)}]"
    return out


# ---------------------------------------------------------------------------------------------- loader


class _Refusal(Exception):
    """Raised inside the composer; ends the current document only."""

    def __init__(self, message: str, path: Sequence[str | int], mark: Any) -> None:
        super().__init__(message)
        self.message, self.field, self.mark = message, field_path(path), mark


class _BoundedComposer(yaml.composer.Composer):
    """PyYAML's composer with the bounds of this module, checked before each node is built."""

    if TYPE_CHECKING:  # given by the parser and the resolver it is mixed with

        def get_event(self) -> Any: ...
        def peek_event(self) -> Any: ...
        def check_event(self, *choices: Any) -> bool: ...
        def resolve(self, kind: type[yaml.nodes.Node], value: Any, implicit: Any) -> str: ...

    def __init__(self) -> None:
        super().__init__()
        self._reset()

    def _reset(self) -> None:
        self.anchors = {}
        self._path: list[str | int] = []
        self._depth = 0
        self._aliases = 0
        self._expansion = 0
        # Expanded size of every finished node, by id; a node still being composed has none yet.
        self._sizes: dict[int, int] = {}

    def _refuse(self, message: str, mark: Any) -> _Refusal:
        return _Refusal(message, self._path, mark)

    def compose_document(self) -> yaml.nodes.Node | None:
        self._reset()
        node: yaml.nodes.Node | None = super().compose_document()
        self._sizes = {}
        return node

    def compose_node(self, parent: yaml.nodes.Node | None, index: Any) -> yaml.nodes.Node:
        event = self.peek_event()
        if isinstance(event, yaml.events.AliasEvent):
            target = self.anchors.get(event.anchor)
            if target is not None:  # an undefined alias is PyYAML's own error
                size = self._sizes.get(id(target))
                if size is None:
                    why = f"alias {errors.shown(event.anchor, 40)} refers to a node that contains it"
                    raise self._refuse(why, event.start_mark)
                self._aliases += 1
                if self._aliases > MAX_ALIASES:
                    raise self._refuse(f"more than {MAX_ALIASES} aliases in one document", event.start_mark)
                self._expansion += size
                if self._expansion > MAX_ALIAS_EXPANSION:
                    raise self._refuse(
                        f"aliases repeat more than {MAX_ALIAS_EXPANSION} nodes and characters "
                        "(an alias bomb?)",
                        event.start_mark,
                    )
            alias = super().compose_node(parent, index)
            assert alias is not None  # an alias event always gives its target
            return alias
        nested = isinstance(event, yaml.events.CollectionStartEvent)
        if nested:
            self._depth += 1
            if self._depth > MAX_DEPTH:
                raise self._refuse(f"collections are nested more than {MAX_DEPTH} deep", event.start_mark)
        node = super().compose_node(parent, index)
        assert node is not None  # a scalar or collection event always gives a node
        if nested:
            self._depth -= 1
        self._sizes[id(node)] = self._size(node)
        return node

    def _size(self, node: yaml.nodes.Node) -> int:
        if isinstance(node, yaml.nodes.ScalarNode):
            if node.tag in _NUMBER_TAGS and len(node.value) > MAX_NUMBER_CHARS:
                raise self._refuse(f"a number longer than {MAX_NUMBER_CHARS} characters", node.start_mark)
            return 1 + len(node.value)
        if isinstance(node, yaml.nodes.MappingNode):
            return 1 + sum(self._sizes[id(k)] + self._sizes[id(v)] for k, v in node.value)
        return 1 + sum(self._sizes[id(item)] for item in node.value)

    def _open(self, node_class: type[Any], anchor: Any) -> Any:
        """A collection node from its start event, as PyYAML's composer makes it (anchored at once)."""
        start = self.get_event()
        tag = start.tag
        if tag is None or tag == "!":
            tag = self.resolve(node_class, None, start.implicit)
        node = node_class(tag, [], start.start_mark, None, flow_style=start.flow_style)
        if anchor is not None:
            self.anchors[anchor] = node
        return node

    def compose_sequence_node(self, anchor: Any) -> yaml.nodes.SequenceNode:
        node: yaml.nodes.SequenceNode = self._open(yaml.nodes.SequenceNode, anchor)
        while not self.check_event(yaml.events.SequenceEndEvent):
            self._path.append(len(node.value))
            node.value.append(self.compose_node(node, len(node.value)))
            self._path.pop()
        node.end_mark = self.get_event().end_mark
        return node

    def compose_mapping_node(self, anchor: Any) -> yaml.nodes.MappingNode:
        node: yaml.nodes.MappingNode = self._open(yaml.nodes.MappingNode, anchor)
        seen: set[str] = set()
        while not self.check_event(yaml.events.MappingEndEvent):
            event = self.peek_event()
            if not isinstance(event, yaml.events.ScalarEvent | yaml.events.AliasEvent):
                raise self._refuse("a key must be a string, not a collection", event.start_mark)
            key_node = self.compose_node(node, None)
            if not isinstance(key_node, yaml.nodes.ScalarNode) or key_node.tag not in (STR_TAG, MERGE_TAG):
                why = f"key {_key_shown(key_node)}, not a string (quote it)"
                raise self._refuse(why, key_node.start_mark)
            key: str = key_node.value
            if key in seen:
                raise self._refuse(f"duplicate key {errors.shown(key)}", key_node.start_mark)
            seen.add(key)
            self._path.append(key)
            value_node = self.compose_node(node, key_node)
            self._path.pop()
            node.value.append((key_node, value_node))
        node.end_mark = self.get_event().end_mark
        return node


def _key_shown(node: yaml.nodes.Node) -> str:
    """``1 is read as int``: what a non-string key is, for the message."""
    if not isinstance(node, yaml.nodes.ScalarNode):
        return "is a collection"
    tag = str(node.tag)
    standard = tag.startswith("tag:yaml.org,2002:")
    kind = tag.removeprefix("tag:yaml.org,2002:") if standard else errors.shown(tag, 40)
    return f"{errors.shown(node.value, 40)} is read as {kind}"


class _PyLoader(
    _BoundedComposer,
    yaml.reader.Reader,
    yaml.scanner.Scanner,
    yaml.parser.Parser,
    yaml.constructor.SafeConstructor,
    yaml.resolver.Resolver,
):
    def __init__(self, text: str) -> None:
        yaml.reader.Reader.__init__(self, text)
        yaml.scanner.Scanner.__init__(self)
        yaml.parser.Parser.__init__(self)
        _BoundedComposer.__init__(self)
        yaml.constructor.SafeConstructor.__init__(self)
        yaml.resolver.Resolver.__init__(self)


LOADERS: dict[str, type[Any]] = {"python": _PyLoader}
"""Every loader this PyYAML offers; tests run the bounds against each."""

if yaml.__with_libyaml__:
    import yaml._yaml

    class _CLoader(
        _BoundedComposer,  # first: libyaml's own composer (CParser.get_node) must not be used
        yaml._yaml.CParser,
        yaml.constructor.SafeConstructor,
        yaml.resolver.Resolver,
    ):
        def __init__(self, text: str) -> None:
            yaml._yaml.CParser.__init__(self, text)
            _BoundedComposer.__init__(self)
            yaml.constructor.SafeConstructor.__init__(self)
            yaml.resolver.Resolver.__init__(self)

    LOADERS["libyaml"] = _CLoader

Loader: type[Any] = LOADERS.get("libyaml", _PyLoader)


# ---------------------------------------------------------------------------------------------- files


def _read(path: str) -> str:
    if path == "-":
        data = sys.stdin.read(MAX_INPUT_BYTES + 1)
        where = "stdin"
    else:
        try:
            with open(path, encoding="utf-8") as f:
                data = f.read(MAX_INPUT_BYTES + 1)
        except OSError as exc:
            raise InputError(f"cannot read {path}: {exc.strerror or exc}") from None
        except UnicodeDecodeError:
            raise InputError(f"cannot read {path}: not UTF-8 text") from None
        where = path
    if len(data) > MAX_INPUT_BYTES:
        raise InputError(f"{where}: larger than {MAX_INPUT_BYTES} bytes")
    return data


def _chunks(text: str) -> Iterator[tuple[int, str, bool]]:
    """(lines before it, text, whether it is the whole file) of each piece from a ``---`` line on."""
    if _DIRECTIVE.search(text):
        yield 0, text, True
        return
    start, line = 0, 0
    for match in _SEPARATOR.finditer(text):
        if match.start() == 0:
            continue
        yield line, text[start : match.start()], False
        line += sum(1 for _ in _LINE_BREAK.finditer(text, start, match.start()))
        start = match.start()
    yield line, text[start:], False


def _at(mark: Any, base: int) -> str:
    return f" at line {base + mark.line + 1}" if mark is not None else ""


def _documents(text: str, loader_class: type[Any]) -> Iterator[tuple[Any, errors.InvalidSpec | None]]:
    """(object, None) or (None, why) per document of ``text``, in order."""
    for base, piece, whole in _chunks(text):
        for obj, why in _piece(piece, base, loader_class):
            if why is not None and whole:
                yield obj, errors.InvalidSpec(f"{why.message}; the rest of this file ({_WHOLE}) was not read")
            else:
                yield obj, why


def _piece(text: str, base: int, loader_class: type[Any]) -> Iterator[tuple[Any, errors.InvalidSpec | None]]:
    try:
        loader = loader_class(text)
    except yaml.reader.ReaderError as exc:  # the pure-Python reader checks every character first
        yield None, _unreadable(exc, text, base)
        return
    try:
        while True:
            try:
                if not loader.check_node():
                    return
                node = loader.get_node()
            # After any refusal the piece is left: reading on to the end of a hostile document would
            # cost the pure-Python scanner quadratic time (100,000 '[' take minutes).
            except _Refusal as exc:
                yield None, errors.InvalidSpec(f"{exc.message}{_at(exc.mark, base)}", field=exc.field or None)
                return
            except yaml.MarkedYAMLError as exc:  # broken YAML, an undefined alias, an anchor defined twice
                mark = exc.problem_mark or exc.context_mark
                yield None, errors.InvalidSpec(f"invalid YAML{_at(mark, base)}: {exc.problem or exc.context}")
                return
            except yaml.reader.ReaderError as exc:  # libyaml reads as it parses
                yield None, _unreadable(exc, text, base)
                return
            yield _construct(loader, node, base)
    finally:
        loader.dispose()


def _unreadable(exc: yaml.reader.ReaderError, text: str, base: int) -> errors.InvalidSpec:
    line = base + sum(1 for _ in _LINE_BREAK.finditer(text, 0, max(0, exc.position))) + 1
    return errors.InvalidSpec(f"invalid YAML at line {line}: character #x{exc.character:04x}: {exc.reason}")


def _construct(loader: Any, node: yaml.nodes.Node, base: int) -> tuple[Any, errors.InvalidSpec | None]:
    try:
        return loader.construct_document(node), None
    except yaml.MarkedYAMLError as exc:  # an unknown tag, bad !!binary, a merge of a non-mapping
        why = errors.InvalidSpec(f"{exc.problem or exc.context}{_at(exc.problem_mark, base)}")
    except (ValueError, TypeError, OverflowError) as exc:  # a timestamp of 13 months, ...
        why = errors.InvalidSpec(f"unreadable value{_at(node.start_mark, base)}: {errors.shown(exc)}")
    # What the failed document left half-built must not run into the next one.
    yaml.constructor.SafeConstructor.__init__(loader)
    return None, why


def _sort(src: str, obj: Any, docs: list[Document], refused: list[Refused]) -> None:
    """One loaded document into ``docs`` (``kind: List`` flattened) or ``refused``."""
    if obj is None:
        return
    if not isinstance(obj, dict):
        why = f"a document must be a mapping (an object), got {type(obj).__name__}"
        refused.append(Refused(src, errors.InvalidSpec(why)))
    elif obj.get("kind") == "List" and isinstance(obj.get("items"), list):
        for j, item in enumerate(obj["items"], start=1):
            if isinstance(item, dict):
                docs.append(Document(f"{src}.items[{j}]", item))
            else:
                refused.append(Refused(f"{src}.items[{j}]", errors.InvalidSpec("an item must be a mapping")))
    else:
        docs.append(Document(src, obj))


def load(paths: Sequence[str], *, loader_class: type[Any] | None = None) -> Manifests:
    """Every mapping document of every file, in order; ``kind: List`` documents are flattened."""
    if list(paths).count("-") > 1:
        raise InputError("-f - (stdin) can be given only once")
    docs: list[Document] = []
    refused: list[Refused] = []
    read = 0
    for path in paths:
        name = "stdin" if path == "-" else path
        for number, (obj, error) in enumerate(_documents(_read(path), loader_class or Loader), start=1):
            read += 1
            if read > MAX_DOCUMENTS:
                raise InputError(f"more than {MAX_DOCUMENTS} documents in the input")
            src = f"{name}#{number}"
            if error is not None:
                refused.append(Refused(src, error))
            else:
                _sort(src, obj, docs, refused)
            if len(docs) > MAX_DOCUMENTS:
                raise InputError(f"more than {MAX_DOCUMENTS} objects in the input")
    return Manifests(docs, refused)
