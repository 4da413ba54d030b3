"""Docker schema1 manifests (deprecated): digest, checks, and the image config.

Docker (moby v25, the last release that pulled schema1 by default) turns a
schema1 manifest into an image in `pullSchema1`: verify the digest over the
canonical payload (the JWS signatures stripped), check the manifest, fix the
layer chain (`fixManifestLayers`), walk the history from the bottom (a
`throwaway` entry gives history only), download the other layers, and
build an image config from the top entry's v1 config (`MakeConfigFromV1Config`
with `HistoryFromConfig`). The config's digest is the image ID, so it must be
byte-for-byte what Go's encoding/json writes; this module reproduces that.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from imgpull._core import fix_schema1_layers, sha256_bytes
from imgpull.errors import ManifestError, ManifestVerificationError, Schema1Error
from imgpull.manifest import Descriptor, Schema1Manifest, schema1_canonical_payload

# What docker stores a schema1 layer as (schema1 has no media types).
LAYER_MEDIA_TYPE = "application/vnd.docker.image.rootfs.diff.tar.gzip"
UNKNOWN_SIZE = -1  # schema1 gives no blob sizes
_DIGEST = re.compile(r"sha256:[a-f0-9]{64}\Z")
# json.Marshal of a zero time.Time.
_GO_ZERO_TIME = "0001-01-01T00:00:00Z"


def deprecation_message(ref: str) -> str:
    """moby v25's DeprecatedSchema1ImageMessage, word for word."""
    return (
        "[DEPRECATION NOTICE] Docker Image Format v1, and Docker Image manifest version 2, "
        "schema 1 support will be removed in an upcoming release. Suggest the author of "
        f"{ref} to upgrade the image to the OCI Format, or Docker Image manifest v2, "
        "schema 2. More information at https://docs.docker.com/go/deprecated-image-specs/"
    )


# What a schema1 digest covers, and all that a pull reads of the manifest.
canonical_payload = schema1_canonical_payload


def manifest_digest(raw: bytes, expected: str | None) -> str:
    """The digest of a schema1 manifest: over its canonical payload.

    With `expected` (a pull by digest) it must match; this comes before any
    other check, as in docker's verifySchema1Manifest.
    """
    actual = sha256_bytes(canonical_payload(raw))
    if expected is not None and actual != expected:
        raise ManifestVerificationError(
            f"image verification failed for digest {expected}: the payload hashes to {actual}"
        )
    return actual


# ---------------------------------------------------------------------------
# Go's encoding/json, as far as a v1 config needs it
# ---------------------------------------------------------------------------


class _GoJSONError(ValueError):
    pass


def _reject_constant(name: str) -> Any:
    raise _GoJSONError(f"invalid character in JSON: {name}")


_DECODER = json.JSONDecoder(parse_constant=_reject_constant)
_WS = " \t\n\r"


def _go_string(s: str) -> str:
    """A string as Go 1.21's json.Marshal writes it (HTML-safe)."""
    out = ['"']
    for ch in s:
        o = ord(ch)
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        elif o < 0x20 or ch in "<>&" or o in (0x2028, 0x2029):
            out.append(f"\\u{o:04x}")
        elif 0xD800 <= o <= 0xDFFF:  # a lone surrogate: Go decoded it as U+FFFD
            out.append("\ufffd")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def _go_text(s: str) -> str:
    """A decoded JSON string as Go holds it: a lone surrogate (from a
    "\\ud800" escape, which Python keeps) is U+FFFD. Rust cannot take one."""
    return _LONE_SURROGATE.sub("\ufffd", s)


def _compact(raw: str) -> str:
    """Go's json.Compact with HTML escaping: what Marshal does to a RawMessage."""
    out: list[str] = []
    in_string = escaped = False
    for ch in raw:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch in _WS:
            continue
        elif ch == '"':
            in_string = True
        if ch in "<>&" or ch in "\u2028\u2029":
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return "".join(out)


def _raw_object(text: str) -> list[tuple[str, str, Any]]:
    """A JSON object's members as (key, raw value text, value), in order:
    Go's Unmarshal into map[string]*json.RawMessage."""
    idx = _skip(text, 0)
    if idx >= len(text) or text[idx] != "{":
        raise _GoJSONError("expected a JSON object")
    members: list[tuple[str, str, Any]] = []
    idx = _skip(text, idx + 1)
    if idx < len(text) and text[idx] == "}":
        return _end(text, idx + 1, members)
    while True:
        if idx >= len(text) or text[idx] != '"':
            raise _GoJSONError("expected a string key")
        key, idx = json.decoder.scanstring(text, idx + 1)  # type: ignore[attr-defined]
        idx = _skip(text, idx)
        if idx >= len(text) or text[idx] != ":":
            raise _GoJSONError("expected ':'")
        idx = _skip(text, idx + 1)
        value, end = _DECODER.raw_decode(text, idx)
        members.append((key, text[idx:end], value))
        idx = _skip(text, end)
        if idx < len(text) and text[idx] == ",":
            idx = _skip(text, idx + 1)
            continue
        if idx < len(text) and text[idx] == "}":
            return _end(text, idx + 1, members)
        raise _GoJSONError("expected ',' or '}'")


def _skip(text: str, idx: int) -> int:
    while idx < len(text) and text[idx] in _WS:
        idx += 1
    return idx


def _end(text: str, idx: int, members: list[tuple[str, str, Any]]) -> list[tuple[str, str, Any]]:
    if _skip(text, idx) != len(text):
        raise _GoJSONError("invalid character after top-level value")
    return members


def _go_marshal_map(members: Mapping[str, str]) -> str:
    """map[string]*json.RawMessage → JSON: sorted keys, compacted values."""
    parts = [f"{_go_string(k)}:{_compact(members[k])}" for k in sorted(members)]
    return "{" + ",".join(parts) + "}"


# Go's Unmarshal into a struct: a key matches a field exactly or
# case-insensitively; of several keys for one field the last wins.


def _field(obj: Mapping[str, Any], name: str) -> Any:
    found = None
    folded = name.casefold()
    for key, value in obj.items():
        if key == name or key.casefold() == folded:
            found = (value,)
    return None if found is None else found[0]


def _want_str(value: Any, what: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise _GoJSONError(f"cannot unmarshal {type(value).__name__} into {what} (a string)")
    return value


def _want_bool(value: Any, what: str) -> bool:
    if value is None:
        return False
    if not isinstance(value, bool):
        raise _GoJSONError(f"cannot unmarshal {type(value).__name__} into {what} (a bool)")
    return value


def _want_int(value: Any, what: str) -> int:
    if value is None:
        return 0
    if not isinstance(value, int) or isinstance(value, bool):
        raise _GoJSONError(f"cannot unmarshal {type(value).__name__} into {what} (an integer)")
    return value


def _want_strs(value: Any, what: str) -> list[str] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _GoJSONError(f"cannot unmarshal into {what} (a list of strings)")
    return list(value)


def _want_strslice(value: Any, what: str) -> list[str] | None:
    """strslice.StrSlice: a string or a list of strings."""
    if isinstance(value, str):
        return [value]
    return _want_strs(value, what)


def _want_obj(value: Any, what: str) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise _GoJSONError(f"cannot unmarshal {type(value).__name__} into {what} (an object)")
    return value


_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?(Z|[+-]\d{2}:\d{2})\Z"
)


def _go_time(value: Any, what: str) -> str | None:
    """A time.Time round trip: RFC 3339 in, RFC3339Nano out (None for null)."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise _GoJSONError(f"cannot unmarshal {type(value).__name__} into {what} (a time)")
    m = _RFC3339.match(value)
    if m is None:
        raise _GoJSONError(f"parsing time {value!r} as RFC 3339")
    y, mo, d, h, mi, s, frac, zone = m.groups()
    frac = (frac or "")[:9].rstrip("0")
    if zone in ("+00:00", "-00:00"):
        zone = "Z"
    return f"{y}-{mo}-{d}T{h}:{mi}:{s}{'.' + frac if frac else ''}{zone}"


def _marshal_value(value: Any) -> str:
    """json.Marshal of the plain values a config holds (already Go-typed)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return _go_string(value)
    if isinstance(value, list):
        return "[" + ",".join(_marshal_value(v) for v in value) + "]"
    if isinstance(value, _GoObject):
        return value.text
    if isinstance(value, dict):  # a Go map: sorted keys
        return (
            "{"
            + ",".join(f"{_go_string(k)}:{_marshal_value(value[k])}" for k in sorted(value))
            + "}"
        )
    raise TypeError(f"unexpected value {value!r}")


@dataclass(frozen=True)
class _GoObject:
    """An already-encoded JSON object (a Go struct)."""

    text: str


def _struct(fields: Sequence[tuple[str, Any, bool]]) -> _GoObject:
    """Encode a Go struct: (json name, value, omitempty) in field order."""
    parts = []
    for name, value, omitempty in fields:
        if omitempty and (value is None or value is False or value == 0 or value in ("", [], {})):
            continue
        parts.append(f"{_go_string(name)}:{_marshal_value(value)}")
    return _GoObject("{" + ",".join(parts) + "}")


def _empty_structs(value: Any, what: str) -> dict[str, Any] | None:
    """map[K]struct{}: every value an object (or null)."""
    obj = _want_obj(value, what)
    if obj is None:
        return None
    for v in obj.values():
        _want_obj(v, what)
    return {k: _GoObject("{}") for k in obj}


def _health(value: Any) -> _GoObject | None:
    obj = _want_obj(value, "Healthcheck")
    if obj is None:
        return None

    def f(name: str) -> Any:
        return _field(obj, name)

    return _struct(
        [
            ("Test", _want_strs(f("Test"), "Healthcheck.Test"), True),
            ("Interval", _want_int(f("Interval"), "Healthcheck.Interval"), True),
            ("Timeout", _want_int(f("Timeout"), "Healthcheck.Timeout"), True),
            ("StartPeriod", _want_int(f("StartPeriod"), "Healthcheck.StartPeriod"), True),
            ("StartInterval", _want_int(f("StartInterval"), "Healthcheck.StartInterval"), True),
            ("Retries", _want_int(f("Retries"), "Healthcheck.Retries"), True),
        ]
    )


def _container_config(value: Any, what: str) -> _GoObject | None:
    """container.Config (moby v25) through Unmarshal + Marshal."""
    obj = _want_obj(value, what)
    if obj is None:
        return None

    def f(name: str) -> Any:
        return _field(obj, name)

    labels = _want_obj(f("Labels"), f"{what}.Labels")
    if labels is not None:
        labels = {k: _want_str(v, f"{what}.Labels") for k, v in labels.items()}
    stop_timeout = f("StopTimeout")
    return _struct(
        [
            ("Hostname", _want_str(f("Hostname"), what), False),
            ("Domainname", _want_str(f("Domainname"), what), False),
            ("User", _want_str(f("User"), what), False),
            ("AttachStdin", _want_bool(f("AttachStdin"), what), False),
            ("AttachStdout", _want_bool(f("AttachStdout"), what), False),
            ("AttachStderr", _want_bool(f("AttachStderr"), what), False),
            ("ExposedPorts", _empty_structs(f("ExposedPorts"), f"{what}.ExposedPorts"), True),
            ("Tty", _want_bool(f("Tty"), what), False),
            ("OpenStdin", _want_bool(f("OpenStdin"), what), False),
            ("StdinOnce", _want_bool(f("StdinOnce"), what), False),
            ("Env", _want_strs(f("Env"), f"{what}.Env"), False),
            ("Cmd", _want_strslice(f("Cmd"), f"{what}.Cmd"), False),
            ("Healthcheck", _health(f("Healthcheck")), True),
            ("ArgsEscaped", _want_bool(f("ArgsEscaped"), what), True),
            ("Image", _want_str(f("Image"), what), False),
            ("Volumes", _empty_structs(f("Volumes"), f"{what}.Volumes"), False),
            ("WorkingDir", _want_str(f("WorkingDir"), what), False),
            ("Entrypoint", _want_strslice(f("Entrypoint"), f"{what}.Entrypoint"), False),
            ("NetworkDisabled", _want_bool(f("NetworkDisabled"), what), True),
            ("MacAddress", _want_str(f("MacAddress"), what), True),
            ("OnBuild", _want_strs(f("OnBuild"), f"{what}.OnBuild"), False),
            ("Labels", labels, False),
            ("StopSignal", _want_str(f("StopSignal"), what), True),
            (
                "StopTimeout",
                None if stop_timeout is None else _want_int(stop_timeout, what),
                True,
            ),
            ("Shell", _want_strslice(f("Shell"), f"{what}.Shell"), True),
        ]
    )


_EMPTY_CONFIG = _container_config({}, "container_config")


def _v1_image_json(v1: Mapping[str, Any]) -> str:
    """image.V1Image (moby v25) through Unmarshal + Marshal: the fallback that
    MakeConfigFromV1Config takes for configs of docker < 1.8.3."""

    def f(name: str) -> Any:
        return _field(v1, name)

    container_config = _container_config(f("container_config"), "container_config")
    return _struct(
        [
            ("id", _want_str(f("id"), "id"), True),
            ("parent", _want_str(f("parent"), "parent"), True),
            ("comment", _want_str(f("comment"), "comment"), True),
            ("created", _go_time(f("created"), "created"), False),
            ("container", _want_str(f("container"), "container"), True),
            ("container_config", container_config or _EMPTY_CONFIG, False),
            ("docker_version", _want_str(f("docker_version"), "docker_version"), True),
            ("author", _want_str(f("author"), "author"), True),
            ("config", _container_config(f("config"), "config"), True),
            ("architecture", _want_str(f("architecture"), "architecture"), True),
            ("variant", _want_str(f("variant"), "variant"), True),
            ("os", _want_str(f("os"), "os"), True),
            ("Size", _want_int(f("Size"), "Size"), True),
        ]
    ).text


def _version_less(a: str, b: str) -> bool:
    """moby's versions.LessThan: dotted integers, non-numbers count as 0."""

    def num(part: str) -> int:
        return int(part) if re.fullmatch(r"[+-]?\d+", part) else 0

    if a == b:
        return False
    pa, pb = a.split("."), b.split(".")
    for i in range(max(len(pa), len(pb))):
        x = num(pa[i]) if i < len(pa) else 0
        y = num(pb[i]) if i < len(pb) else 0
        if x != y:
            return x < y
    return False


# ---------------------------------------------------------------------------
# The pull plan and the config
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class HistoryEntry:
    """image.History from one v1Compatibility, as the docker engine on these
    machines (Debian's docker.io, moby 20.10) writes it: its own struct, where
    `created` is a time.Time without omitempty (Go's zero time when the v1
    entry has none) and `author` comes before `created_by`. (moby v25 switched
    to ocispec.History: created omitted when missing, created_by first; the
    image ID of such a schema1 image differs between the two engines.)"""

    created: str | None
    created_by: str
    author: str
    comment: str
    empty_layer: bool

    def go_json(self) -> str:
        return _struct(
            [
                ("created", self.created or _GO_ZERO_TIME, False),
                ("author", self.author, True),
                ("created_by", self.created_by, True),
                ("comment", self.comment, True),
                ("empty_layer", self.empty_layer, True),
            ]
        ).text


@dataclass(frozen=True)
class Schema1Plan:
    """What a schema1 pull does, bottom layer first."""

    history: tuple[HistoryEntry, ...]
    layers: tuple[Descriptor, ...]  # to download; size UNKNOWN_SIZE
    top_v1: str  # the top history entry's v1Compatibility
    os: str | None

    def config(self, diff_ids: Sequence[str]) -> bytes:
        return make_config(self.top_v1, diff_ids, self.history)


def _load_v1(text: Any, i: int) -> dict[str, Any]:
    if not isinstance(text, str):  # (the caller relies on this check)
        raise ManifestError(
            f"invalid schema1 manifest: history[{i}].v1Compatibility is not a string"
        )
    try:
        obj = _DECODER.decode(text)
    except (ValueError, RecursionError) as exc:
        raise ManifestError(f"invalid v1Compatibility in history[{i}]: {exc}") from None
    if not isinstance(obj, dict):
        raise ManifestError(f"invalid v1Compatibility in history[{i}]: not a JSON object")
    return obj


def plan(manifest: Schema1Manifest, ref: str) -> Schema1Plan:
    """Check a schema1 manifest as docker does and say what to fetch."""
    body = manifest.body
    if body.get("schemaVersion") != 1:
        raise ManifestError(f'unsupported schema version {body.get("schemaVersion")!r} for "{ref}"')
    fs_layers, history = body.get("fsLayers"), body.get("history")
    if not isinstance(fs_layers, list) or not isinstance(history, list):
        raise ManifestError(
            f'invalid schema1 manifest for "{ref}": fsLayers and history must be lists'
        )
    if len(fs_layers) != len(history):
        raise ManifestError(f'length of history not equal to number of layers for "{ref}"')
    if not fs_layers:
        raise ManifestError(f'no FSLayers in manifest for "{ref}"')
    v1s: list[dict[str, Any]] = []
    raws: list[str] = []
    for i, entry in enumerate(history):
        text = entry.get("v1Compatibility") if isinstance(entry, dict) else None
        v1s.append(_load_v1(text, i))
        raws.append(str(text))
    try:
        chain = [
            (
                _go_text(_want_str(_field(v, "id"), "id")),
                _go_text(_want_str(_field(v, "parent"), "parent")),
            )
            for v in v1s
        ]
        keep = fix_schema1_layers(chain)
        entries: list[HistoryEntry] = []
        layers: list[Descriptor] = []
        for i in reversed(keep):
            layer = fs_layers[i]
            blob_sum = layer.get("blobSum") if isinstance(layer, dict) else None
            if not isinstance(blob_sum, str) or not _DIGEST.match(blob_sum):
                raise ManifestError(f"could not validate layer digest {blob_sum!r}")
            throwaway = _want_bool(_field(v1s[i], "throwaway"), "throwaway")
            entries.append(_history(v1s[i], throwaway))
            if not throwaway:
                layers.append(Descriptor(LAYER_MEDIA_TYPE, blob_sum, UNKNOWN_SIZE))
    except Schema1Error as exc:
        raise ManifestError(str(exc)) from None
    except _GoJSONError as exc:
        raise ManifestError(f"invalid v1Compatibility in schema1 manifest: {exc}") from None
    top = keep[0]
    os_name = v1s[top].get("os")
    return Schema1Plan(
        history=tuple(entries),
        layers=tuple(layers),
        top_v1=raws[top],
        os=os_name if isinstance(os_name, str) and os_name else None,
    )


def _history(v1: Mapping[str, Any], empty_layer: bool) -> HistoryEntry:
    """HistoryFromConfig."""
    cc = _want_obj(_field(v1, "container_config"), "container_config") or {}
    cmd = _want_strslice(_field(cc, "Cmd"), "container_config.Cmd") or []
    # Unmarshal checks the whole V1Image; marshal it to surface type errors.
    _v1_image_json(v1)
    return HistoryEntry(
        created=_go_time(_field(v1, "created"), "created"),
        created_by=" ".join(cmd),
        author=_want_str(_field(v1, "author"), "author"),
        comment=_want_str(_field(v1, "comment"), "comment"),
        empty_layer=empty_layer,
    )


_DROPPED = ("id", "parent", "Size", "parent_id", "layer_id", "throwaway")
_NO_FALLBACK_MIN_VERSION = "1.8.3"


def make_config(top_v1: str, diff_ids: Sequence[str], history: Sequence[HistoryEntry]) -> bytes:
    """MakeConfigFromV1Config: the image config docker builds, byte for byte."""
    try:
        pairs = _raw_object(top_v1)
        obj = {k: v for k, _, v in pairs}
        version = _want_str(_field(obj, "docker_version"), "docker_version")
        if _version_less(version, _NO_FALLBACK_MIN_VERSION):
            pairs = _raw_object(_v1_image_json(obj))
    except (_GoJSONError, ValueError, RecursionError) as exc:
        raise ManifestError(f"invalid v1Compatibility of the top layer: {exc}") from None
    members = {k: raw for k, raw, _ in pairs}
    for key in _DROPPED:
        members.pop(key, None)
    rootfs: list[tuple[str, Any, bool]] = [
        ("type", "layers", False),
        ("diff_ids", list(diff_ids), True),
    ]
    members["rootfs"] = _struct(rootfs).text
    members["history"] = "[" + ",".join(h.go_json() for h in history) + "]"
    return _go_marshal_map(members).encode()
