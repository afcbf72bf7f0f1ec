"""Confinement and validation of every name and path that comes from a spec.

The spec is untrusted input to a privileged agent. Everything that becomes a host path goes through
:func:`confine` or :func:`ensure_under`, which resolve symlinks (``realpath``) and refuse anything that
ends up outside its root. The validators below check the shape of names, hostnames and absolute paths
before anything touches the host; each raises :class:`hostlib.errors.InvalidSpec` with a specific
message and the offending field.

Limits: names up to 253 characters (a Kubernetes object name), paths up to 1024 bytes, hostnames up
to 253 characters with labels up to 63 (RFC 1035).
"""

from __future__ import annotations

import ipaddress
import os
import re

from hostlib import commands, errors

MAX_NAME = 253
MAX_PATH = 1024
MAX_HOSTNAME = 253

_NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
_LABEL_RE = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9]*[A-Za-z0-9])?$")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")


def _require_str(value: object, field: str | None) -> str:
    if not isinstance(value, str):
        raise errors.InvalidSpec(f"must be a string, got {type(value).__name__}", field=field)
    return value


def validate_name(value: object, *, field: str | None = None) -> str:
    """A Kubernetes-style object name (DNS-1123 subdomain): lowercase letters, digits, '-', '.'."""
    name = _require_str(value, field)
    if not name:
        raise errors.InvalidSpec("must not be empty", field=field)
    if len(name) > MAX_NAME:
        raise errors.InvalidSpec(f"is {len(name)} characters long, the limit is {MAX_NAME}", field=field)
    if not _NAME_RE.match(name):
        raise errors.InvalidSpec(
            f"{name!r} is not a valid name (lowercase letters, digits, '-' and '.', "
            "starting and ending with a letter or digit)",
            field=field,
        )
    return name


def is_ipv4(value: str) -> bool:
    try:
        ipaddress.IPv4Address(value)
    except ValueError:
        return False
    return True


def is_ipv6(value: str) -> bool:
    try:
        ipaddress.IPv6Address(value)
    except ValueError:
        return False
    return True


def validate_hostname(value: object, *, field: str | None = None, allow_bare_ipv6: bool = True) -> str:
    """A DNS name, an IPv4 address or an IPv6 address; returns IPv6 in brackets (``[fd00::1]``).

    A bare IPv6 address is accepted (``fd00::1``) unless ``allow_bare_ipv6`` is false; the result is
    always the bracketed form that mount sources and VDSM mount points use.
    """
    host = _require_str(value, field)
    if not host:
        raise errors.InvalidSpec("must not be empty", field=field)
    if len(host) > MAX_HOSTNAME + 2:
        raise errors.InvalidSpec(f"is longer than {MAX_HOSTNAME} characters", field=field)
    if _CONTROL_RE.search(host):
        raise errors.InvalidSpec("contains a control character (NUL, newline, ...)", field=field)
    if host.startswith("["):
        if not host.endswith("]") or not is_ipv6(host[1:-1]) or "%" in host:
            raise errors.InvalidSpec(f"{host!r} is not a valid bracketed IPv6 address", field=field)
        return "[" + str(ipaddress.IPv6Address(host[1:-1])) + "]"
    if ":" in host:
        if allow_bare_ipv6 and is_ipv6(host) and "%" not in host:
            return "[" + str(ipaddress.IPv6Address(host)) + "]"
        raise errors.InvalidSpec(
            f"{host!r} is not a hostname or IP address (write IPv6 as [addr], no port here)", field=field
        )
    if re.fullmatch(r"[0-9.]+", host):
        if not is_ipv4(host):
            raise errors.InvalidSpec(f"{host!r} is not a valid IPv4 address", field=field)
        return host
    name = host[:-1] if host.endswith(".") else host
    if len(name) > MAX_HOSTNAME:
        raise errors.InvalidSpec(f"is longer than {MAX_HOSTNAME} characters", field=field)
    labels = name.split(".")
    for label in labels:
        if not label or len(label) > 63 or not _LABEL_RE.match(label):
            raise errors.InvalidSpec(
                f"{host!r} is not a valid hostname (labels of letters, digits and inner '-', "
                "up to 63 characters each)",
                field=field,
            )
    return name


def split_host_port(value: object, *, default_port: int, field: str | None = None) -> tuple[str, int]:
    """``host``, ``host:port``, ``[v6]`` or ``[v6]:port`` -> (validated host, port)."""
    text = _require_str(value, field)
    host, port_text = text, ""
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise errors.InvalidSpec(f"{text!r}: unterminated '[' in an IPv6 address", field=field)
        host, rest = text[: end + 1], text[end + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise errors.InvalidSpec(f"{text!r}: expected ':port' after ']'", field=field)
            port_text = rest[1:]
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    elif text.count(":") > 1:
        raise errors.InvalidSpec(f"{text!r}: write an IPv6 address as [addr] or [addr]:port", field=field)
    hostname = validate_hostname(host, field=field, allow_bare_ipv6=False)
    if not port_text and text.endswith(":"):
        raise errors.InvalidSpec(f"{text!r}: empty port", field=field)
    port = default_port
    if port_text:
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise errors.InvalidSpec(f"{text!r}: port must be a number from 1 to 65535", field=field)
        port = int(port_text)
    return hostname, port


def validate_abs_path(value: object, *, field: str | None = None, max_len: int = MAX_PATH) -> str:
    """An absolute path with no '..' component, no NUL or control character; returns it normalised."""
    path = _require_str(value, field)
    if not path:
        raise errors.InvalidSpec("must not be empty", field=field)
    if len(path.encode("utf-8", "surrogateescape")) > max_len:
        raise errors.InvalidSpec(f"is longer than {max_len} bytes", field=field)
    if "\0" in path:
        raise errors.InvalidSpec("contains a NUL byte", field=field)
    if _CONTROL_RE.search(path):
        raise errors.InvalidSpec("contains a control character (newline, tab, ...)", field=field)
    if not path.startswith("/"):
        raise errors.InvalidSpec(f"{path!r} is not an absolute path", field=field)
    if ".." in path.split("/"):
        raise errors.InvalidSpec(f"{path!r} contains a '..' component", field=field)
    normal = os.path.normpath(path)
    # normpath keeps a leading '//' (POSIX); one slash is what every tool means.
    return "/" + normal.lstrip("/")


def validate_relative_path(value: object, *, field: str | None = None, max_len: int = MAX_PATH) -> str:
    """A relative path below some root: no leading '/', no '..', no NUL/control characters."""
    path = _require_str(value, field)
    if len(path.encode("utf-8", "surrogateescape")) > max_len:
        raise errors.InvalidSpec(f"is longer than {max_len} bytes", field=field)
    if "\0" in path or _CONTROL_RE.search(path):
        raise errors.InvalidSpec("contains a NUL or control character", field=field)
    if path.startswith("/"):
        raise errors.InvalidSpec(f"{path!r} must be relative", field=field)
    if ".." in path.split("/"):
        raise errors.InvalidSpec(f"{path!r} contains a '..' component", field=field)
    return os.path.normpath(path) if path else ""


def is_under(root: str, path: str) -> bool:
    """Lexical check on already-resolved paths: ``path`` is ``root`` or below it."""
    root = os.path.normpath(root)
    path = os.path.normpath(path)
    return path == root or path.startswith(root.rstrip("/") + "/")


def refuse_own_dirs(path: str, own: tuple[str, ...], *, field: str | None = None) -> None:
    """InvalidSpec when the host path ``path`` is, contains or lies inside one of hoststorage's own
    directories ``own`` (the state dir and the mount base: ``HostConfig.own_dirs``).

    A localfs link, a dir pool or a hostPath monitor there would hand hoststorage's ledger and lock to
    libvirt as pool volumes, put probe files beside them, or let a pool's volumes shadow mount points
    (issue 9, class 5). Compared both as written and resolved (either may go through a symlink)."""
    for d in own:
        for a in dict.fromkeys((os.path.normpath(path), os.path.realpath(path))):
            for b in dict.fromkeys((os.path.normpath(d), os.path.realpath(d))):
                if is_under(b, a) or is_under(a, b):
                    how = "is" if a == b else ("lies inside" if is_under(b, a) else "contains")
                    raise errors.InvalidSpec(
                        f"{path!r} {how} hoststorage's own directory {d!r} (state dir or mount base)",
                        field=field,
                    )


def ensure_under(root: str, path: str, *, field: str | None = None) -> str:
    """Resolve ``path`` (symlinks included) and return it if it is ``root`` or below; else InvalidSpec.

    ``root`` is resolved too, so a root that is itself a symlink works. Components that do not exist
    yet are resolved lexically, which is what mkdir would then create.
    """
    if "\0" in path:
        raise errors.InvalidSpec("contains a NUL byte", field=field)
    real_root = os.path.realpath(root)
    real = os.path.realpath(path)
    if not is_under(real_root, real):
        raise errors.InvalidSpec(f"{path!r} resolves to {real!r}, outside {real_root!r}", field=field)
    return real


def confine(root: str, relative: str, *, field: str | None = None) -> str:
    """``root/relative`` resolved, refused if it escapes ``root`` (by '..', an absolute part or a link)."""
    rel = validate_relative_path(relative, field=field)
    return ensure_under(root, os.path.join(root, rel), field=field)


def confine_on_storage(
    root: str,
    relative: str,
    *,
    runner: commands.RunnerProtocol,
    timeout: float = 10.0,
    field: str | None = None,
) -> str:
    """:func:`confine` for a ``root`` that is a mount of possibly-hung storage.

    Resolving symlinks below a mount stats the storage; a dead NFS or a stopped gluster brick would put
    the calling thread in uninterruptible sleep. So the resolution runs in a ``realpath`` child that the
    runner kills (or abandons) after ``timeout``; the agent thread only waits for a pipe. ``root`` itself
    is not resolved: it is a mount point hoststorage derived and confined when it made it.
    """
    rel = validate_relative_path(relative, field=field)
    joined = os.path.join(root, rel)
    try:
        result = runner(["realpath", "--canonicalize-missing", "--", joined], timeout=timeout)
    except commands.CommandError as exc:
        if exc.timed_out:
            raise errors.Timeout(
                f"resolving {joined!r} took over {timeout:g}s: the storage does not answer"
            ) from None
        raise
    real = result.stdout.strip()
    if not is_under(root, real):
        raise errors.InvalidSpec(f"{relative!r} resolves to {real!r}, outside {root!r}", field=field)
    return real
