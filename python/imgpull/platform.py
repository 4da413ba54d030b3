"""Platforms (os/architecture/variant) and choosing manifest-list entries.

Follows containerd's `platforms` package (Parse, Normalize, Only, FormatAll)
and moby's pull code: an entry matches when its (architecture, variant) is
in the wanted platform's fallback list, which crosses architectures where
the CPU can run the other one (amd64 -> 386, arm64 -> arm/v8..v5).
"""

from __future__ import annotations

import functools
import platform as _stdlib_platform
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TypeVar
from urllib.parse import unquote

from imgpull.errors import InvalidPlatformError
from imgpull.safetext import shown

__all__ = [
    "InvalidPlatformError",
    "Platform",
    "amd64_level",
    "arm_variant_from_cpuinfo",
    "compatible_variants",
    "cpuinfo_flags",
    "detect_platform",
    "format_all",
    "format_platform",
    "host_platform",
    "match_rank",
    "normalize_platform",
    "parse_platform",
    "platform_from_dict",
    "platform_matches",
    "platform_matches_image",
    "rank_manifests",
    "windows_version_compatible",
]

T = TypeVar("T")


@dataclass(frozen=True)
class Platform:
    """An OCI platform. Fields hold normalised values when built by this module."""

    os: str
    architecture: str
    variant: str | None = None
    os_version: str | None = None
    os_features: tuple[str, ...] = ()
    features: tuple[str, ...] = ()

    def __str__(self) -> str:
        parts = [self.os, self.architecture]
        if self.variant:
            parts.append(self.variant)
        return "/".join(parts)


# --- parsing and normalisation ------------------------------------------------

_KNOWN_OS = frozenset(
    [
        "aix",
        "android",
        "darwin",
        "dragonfly",
        "freebsd",
        "hurd",
        "illumos",
        "ios",
        "js",
        "linux",
        "nacl",
        "netbsd",
        "openbsd",
        "plan9",
        "solaris",
        "windows",
        "zos",
    ]
)
_KNOWN_ARCH = frozenset(
    [
        "386",
        "amd64",
        "amd64p32",
        "arm",
        "armbe",
        "arm64",
        "arm64be",
        "ppc64",
        "ppc64le",
        "loong64",
        "mips",
        "mipsle",
        "mips64",
        "mips64le",
        "mips64p32",
        "mips64p32le",
        "ppc",
        "riscv",
        "riscv64",
        "s390",
        "s390x",
        "sparc",
        "sparc64",
        "wasm",
    ]
)

# containerd's specifier component ([A-Za-z0-9_-]+ in 1.x); today's also
# takes dots for arm64's v8.2, so a dot is allowed between characters only:
# never "." or "..", which a path built from a platform would follow.
_COMPONENT_RE = re.compile(r"[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*", re.ASCII)
# os, or os(version+feature+feature) as containerd's specifier syntax has it.
_OS_RE = re.compile(
    r"([A-Za-z0-9_-]+)(?:\(([A-Za-z0-9_.%-]*)((?:\+[A-Za-z0-9_.%-]+)*)\))?", re.ASCII
)
_BAD_ESCAPE_RE = re.compile(r"%(?![0-9A-Fa-f]{2})", re.ASCII)


def _normalize_os(os_name: str) -> str:
    os_name = os_name.lower()
    return "darwin" if os_name == "macos" else os_name


def _normalize_arch(arch: str, variant: str | None) -> tuple[str, str | None]:
    """containerd's normalizeArch, except that arm64's v8 is spelt "v8", not ""."""
    arch = arch.lower()
    v = (variant or "").lower()
    if arch == "i386":
        return "386", None
    if arch in ("x86_64", "x86-64", "amd64"):
        # v1 is the baseline every amd64 image without a variant targets.
        return "amd64", None if v in ("", "v1", "1") else v
    if arch in ("aarch64", "arm64"):
        if v in ("8", "v8", "v8.0"):
            v = "v8"
        elif v in ("9", "9.0", "v9.0"):
            v = "v9"
        return "arm64", v or None
    if arch == "armhf":
        return "arm", "v7"
    if arch == "armel":
        return "arm", "v6"
    if arch == "arm":
        if v in ("", "7"):
            return "arm", "v7"
        if v in ("5", "6", "8"):
            return "arm", "v" + v
        return "arm", v
    return arch, v or None


def normalize_platform(p: Platform) -> Platform:
    """Canonical spelling: lower case, Go architecture names, sorted features."""
    arch, variant = _normalize_arch(p.architecture, p.variant)
    return replace(
        p,
        os=_normalize_os(p.os),
        architecture=arch,
        variant=variant,
        os_version=p.os_version or None,
        os_features=tuple(sorted(set(p.os_features))),
        features=tuple(p.features),
    )


def _decode_os_option(text: str, specifier: str) -> str:
    if _BAD_ESCAPE_RE.search(text):
        raise _invalid(specifier, f"bad %-escape in '{shown(text)}'")
    return unquote(text)


def _invalid(specifier: str, problem: str) -> InvalidPlatformError:
    return InvalidPlatformError(f"invalid platform '{shown(specifier)}': {problem}")


def parse_platform(specifier: str, *, default: Platform | None = None) -> Platform:
    """Parse "os/arch[/variant]" (e.g. "linux/arm64/v8", "windows(10.0.17763)/amd64").

    A single component that is a known OS or architecture is completed from
    `default` (the host platform when None), as `docker --platform` does.
    """
    if not isinstance(specifier, str):
        raise InvalidPlatformError(f"invalid platform: expected a string, got {type(specifier)}")
    if "*" in specifier:
        raise _invalid(specifier, "wildcards are not supported")
    parts = specifier.split("/")
    if len(parts) > 3:
        raise _invalid(specifier, "expected os/architecture[/variant]")
    m = _OS_RE.fullmatch(parts[0])
    if m is None:
        raise _invalid(
            specifier,
            f"the OS component '{shown(parts[0])}' must be letters, digits, '_' or '-', "
            "optionally followed by (version+features)",
        )
    for part in parts[1:]:
        if not _COMPONENT_RE.fullmatch(part):
            raise _invalid(
                specifier,
                f"component '{shown(part)}' must be letters, digits, '_' or '-', "
                "with a '.' only between them",
            )
    os_name = _normalize_os(m.group(1))
    os_version = _decode_os_option(m.group(2) or "", specifier) or None
    features = tuple(
        f for f in (_decode_os_option(x, specifier) for x in (m.group(3) or "").split("+")) if f
    )

    if len(parts) == 1:
        base = default if default is not None else host_platform()
        if os_name in _KNOWN_OS:
            # containerd's Parse: the host's architecture, but a variant only
            # on arm ("linux" on an amd64/v3 host is linux/amd64, which does
            # not match amd64/v2+ entries).
            arch = base.architecture
            variant = base.variant if arch == "arm" else None
        else:
            arch, variant = _normalize_arch(parts[0], None)
            if arch not in _KNOWN_ARCH or m.group(2) is not None:
                raise _invalid(specifier, "unknown operating system or architecture")
            # The host's OS, without its version (as containerd's Parse).
            os_name, os_version, features = base.os, None, ()
    else:
        arch, variant = parts[1], parts[2] if len(parts) == 3 else None
    return normalize_platform(Platform(os_name, arch, variant, os_version, features))


_OS_OPTION_ESCAPES = str.maketrans({"%": "%25", "+": "%2B", "(": "%28", ")": "%29", "/": "%2F"})


def format_platform(p: Platform) -> str:
    """containerd's Format: "os/arch/variant", without version or features."""
    return format_all(replace(p, os_version=None, os_features=()))


def format_all(p: Platform) -> str:
    """containerd's FormatAll: "os(version+features)/arch/variant", the
    parentheses only when there is a version or a feature (as docker's
    "no matching manifest for windows(10.0.17763)/amd64" shows it)."""
    if not p.os:
        return "unknown"
    os_part = p.os
    features = sorted({f for f in p.os_features if f})
    if p.os_version or features:
        version = (p.os_version or "").translate(_OS_OPTION_ESCAPES)
        extra = "".join("+" + f.translate(_OS_OPTION_ESCAPES) for f in features)
        os_part += f"({version}{extra})"
    return "/".join(x for x in (os_part, p.architecture, p.variant) if x)


def platform_from_dict(obj: Mapping[str, object]) -> Platform:
    """A Platform from a manifest list / OCI index entry's "platform" object."""

    def text(key: str) -> str | None:
        value = obj.get(key)
        if value is None or value == "":
            return None
        if not isinstance(value, str):
            raise InvalidPlatformError(f"platform {key!r} must be a string, got {value!r}")
        return value

    def required(key: str) -> str:
        value = text(key)
        if value is None:
            raise InvalidPlatformError(f"platform object has no {key!r}")
        return value

    def strings(key: str) -> tuple[str, ...]:
        value = obj.get(key)
        if value is None:
            return ()
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise InvalidPlatformError(f"platform {key!r} must be a list of strings")
        return tuple(str(v) for v in value)

    return normalize_platform(
        Platform(
            required("os"),
            required("architecture"),
            text("variant"),
            text("os.version"),
            strings("os.features"),
            strings("features"),
        )
    )


# --- the host -------------------------------------------------------------------

# x86-64 psABI micro-architecture levels, each on top of the previous one, in
# /proc/cpuinfo flag names. Linux clears avx*/avx512* when the OS has not
# enabled their register state, so OSXSAVE/XCR0 need no separate check.
_AMD64_LEVELS: tuple[frozenset[str], ...] = (
    frozenset({"cx16", "lahf_lm", "popcnt", "pni", "sse4_1", "sse4_2", "ssse3"}),
    frozenset({"avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "abm", "movbe", "xsave"}),
    frozenset({"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"}),
)
# Other spellings of the same features (the kernel says pni for SSE3, and
# some tools say lzcnt for ABM).
_FLAG_ALIASES = {"sse3": "pni", "lzcnt": "abm", "sse4.1": "sse4_1", "sse4.2": "sse4_2"}


def amd64_level(flags: Iterable[str]) -> int:
    """The x86-64 level (1-4) a CPU with these /proc/cpuinfo flags reaches."""
    have = {_FLAG_ALIASES.get(f.lower(), f.lower()) for f in flags}
    level = 1
    for needed in _AMD64_LEVELS:
        if not needed <= have:
            break
        level += 1
    return level


def cpuinfo_flags(cpuinfo: str) -> frozenset[str]:
    """The first CPU's "flags" from /proc/cpuinfo text (empty if none)."""
    for key, value in _cpuinfo_fields(cpuinfo):
        if key == "flags":
            return frozenset(value.split())
    return frozenset()


def _cpuinfo_fields(cpuinfo: str) -> Iterable[tuple[str, str]]:
    for line in cpuinfo.splitlines():
        key, colon, value = line.partition(":")
        if colon:
            yield key.strip().lower(), value.strip()


def _cpuinfo_field(cpuinfo: str, name: str) -> str | None:
    for key, value in _cpuinfo_fields(cpuinfo):
        if key == name:
            return value
    return None


_ARM_CPU_ARCH = {
    "8": "v8",
    "aarch64": "v8",
    "7": "v7",
    "7m": "v7",
    "6": "v6",
    "6tej": "v6",
    "5": "v5",
    "5t": "v5",
    "5te": "v5",
    "5tej": "v5",
    "4": "v4",
    "4t": "v4",
    "3": "v3",
}


def arm_variant_from_cpuinfo(cpuinfo: str, machine: str = "") -> str | None:
    """The 32-bit arm variant (v5..v8) as containerd derives it.

    From the "CPU architecture" field of /proc/cpuinfo, else from the machine
    name (armv7l -> v7); an ARMv6-compatible core reporting 7 is v6.
    """
    value = _cpuinfo_field(cpuinfo, "cpu architecture")
    if value is None:
        m = machine.lower()
        if m == "aarch64":
            value = "8"
        elif m.startswith("armv") and len(m) >= 5 and m[4].isdigit():
            value = m[4]
        else:
            return None
    value = value.lower()
    # Old kernels print "?(12)".."?(17)" for cores they cannot name; all ARMv7.
    if re.fullmatch(r"\?\(1[2-7]\)", value):
        value = "7"
    if value == "7":
        model = (_cpuinfo_field(cpuinfo, "model name") or "").lower()
        if model.startswith("armv6-compatible"):
            value = "6"
    return _ARM_CPU_ARCH.get(value)


# platform.machine() spellings -> Go architecture names.
_MACHINE_ARCH = {
    "x86_64": "amd64",
    "amd64": "amd64",
    "x64": "amd64",
    "i386": "386",
    "i486": "386",
    "i586": "386",
    "i686": "386",
    "x86": "386",
    "aarch64": "arm64",
    "arm64": "arm64",
    "aarch64_be": "arm64be",
    "ppc64le": "ppc64le",
    "ppc64": "ppc64",
    "s390x": "s390x",
    "riscv64": "riscv64",
    "loongarch64": "loong64",
    "mips64": "mips64",
    "mips": "mips",
}


def detect_platform(
    sys_platform: str, machine: str, cpuinfo: str = "", os_version: str | None = None
) -> Platform:
    """The platform docker would default to, from these facts (pure).

    `sys_platform` is `sys.platform`, `machine` is `platform.machine()`,
    `cpuinfo` the text of /proc/cpuinfo ("" when unreadable).
    """
    if sys_platform.startswith(("linux", "darwin")):
        # Docker on macOS runs a Linux VM: images are linux images.
        os_name = "linux"
    elif sys_platform in ("win32", "cygwin"):
        os_name = "windows"
    else:
        os_name = sys_platform.rstrip("0123456789") or sys_platform
    m = machine.lower()
    variant: str | None = None
    if m.startswith("arm") and m not in _MACHINE_ARCH:
        arch = "arm"
        variant = arm_variant_from_cpuinfo(cpuinfo, m) or "v7"
    else:
        arch = _MACHINE_ARCH.get(m, m)
        if arch == "amd64":
            level = amd64_level(cpuinfo_flags(cpuinfo))
            variant = f"v{level}" if level > 1 else None
        elif arch == "arm64":
            variant = "v8"
    return normalize_platform(
        Platform(os_name, arch, variant, os_version if os_name == "windows" else None)
    )


@functools.lru_cache(maxsize=1)
def host_platform() -> Platform:
    """The platform of this machine, with its best CPU variant (detected once)."""
    cpuinfo = ""
    if sys.platform.startswith("linux"):
        try:
            with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
                cpuinfo = f.read()
        except OSError:
            pass
    os_version = None
    if sys.platform == "win32":
        # "10.0.20348": what Windows image entries are matched against.
        os_version = _stdlib_platform.version() or None
    return detect_platform(sys.platform, _stdlib_platform.machine(), cpuinfo, os_version)


# --- matching -------------------------------------------------------------------

# arm64 variants and the older ones they can run, newest first (containerd's
# table: Armv9.x includes Armv8.(x+5)).
_ARM64_MAJOR_MINOR = {
    **{f"v8.{n}": ((8, n),) for n in range(10)},
    "v8": ((8, 0),),
    "v9": ((9, 0), (8, 5)),
    **{f"v9.{n}": ((9, n), (8, min(n + 5, 9))) for n in range(8)},
}


def _arm64_vector(chain: tuple[tuple[int, int], ...]) -> list[str]:
    out: list[str] = []
    for major, top in chain:
        out.extend(f"v{major}.{n}" if n else f"v{major}" for n in range(top, -1, -1))
    return out


def compatible_variants(p: Platform) -> list[Platform]:
    """Platforms an image may target to run on `p`, best first (containerd's
    platformVector, which `platforms.Only` matches in order).

    amd64/v3 -> amd64/v3, v2, amd64 (v1 is spelt without a variant), 386;
    arm/v8 -> arm/v8, v7, v6, v5; arm64 (= arm64/v8) -> arm64/v8, arm/v8, v7,
    v6, v5; arm64/v9.x -> v9.x..v9, v8.(x+5)..v8, then the arm ones. An arm64
    variant containerd does not know (v8.10, v10) gets nothing, as in docker.
    Other architectures need the exact variant.
    """
    p = normalize_platform(p)
    vector: list[tuple[str, str | None]] = [(p.architecture, p.variant)]
    level = _variant_number(p.variant)
    if p.architecture == "amd64":
        if level is not None and level > 1:
            vector += [("amd64", f"v{n}" if n > 1 else None) for n in range(level - 1, 0, -1)]
        vector.append(("386", None))
    elif p.architecture == "arm":
        if level is not None and level > 5:
            vector += [("arm", f"v{n}") for n in range(level - 1, 4, -1)]
    elif p.architecture == "arm64":
        chain = _ARM64_MAJOR_MINOR.get(p.variant or "v8")
        vector = []
        if chain is not None:
            vector = [("arm64", v) for v in _arm64_vector(chain)]
            # Every arm64 CPU runs 32-bit arm up to v8.
            vector += [("arm", f"v{n}") for n in range(8, 4, -1)]
    return [replace(p, architecture=arch, variant=variant) for arch, variant in vector]


def _variant_number(variant: str | None) -> int | None:
    """The number in "v3", as containerd reads it (Atoi after the "v"); None when not a
    number, or over 64: no CPU has such a level, and the fallback list it
    would make is as long as the number."""
    text = variant or ""
    digits = text[1:] if text.startswith("v") else text
    if not re.fullmatch(r"[+-]?[0-9]{1,6}", digits, re.ASCII):
        return None
    number = int(digits)
    return number if number <= 64 else None


def _windows_build(version: str | None) -> tuple[int, int, int] | None:
    if not version:
        return None
    parts = version.split(".")
    if len(parts) < 3 or not all(x.isascii() and x.isdigit() for x in parts[:3]):
        return None
    return int(parts[0]), int(parts[1]), int(parts[2])


# Windows Server LTSC builds from which newer hosts can run older images
# (containerd platform_windows_compat.go): ltsc2022, ltsc2025.
_WINDOWS_COMPAT_LTSC = (20348, 26100)


def windows_version_compatible(host_version: str | None, image_version: str | None) -> bool:
    """Whether a Windows image built for `image_version` runs on `host_version`.

    containerd's rule: when either side is unknown, yes; otherwise the same
    major.minor, and the same build before Windows Server 2022; from 2022 on, any
    build from the newest LTSC release older than the host up to the host's.
    """
    host = _windows_build(host_version)
    image = _windows_build(image_version)
    if host is None or image is None:
        return True
    if host[:2] != image[:2]:
        return False
    if host[2] < _WINDOWS_COMPAT_LTSC[0]:
        return host[2] == image[2]
    floor = _WINDOWS_COMPAT_LTSC[0]
    for ltsc in reversed(_WINDOWS_COMPAT_LTSC):
        if host[2] > ltsc:
            floor = ltsc
            break
    return floor <= image[2] <= host[2]


def _os_features_ok(want: Platform, have: Platform) -> bool:
    features = set(have.os_features)
    if want.os == "windows":
        # containerd ignores win32k: every Windows host provides it.
        features.discard("win32k")
    return features <= set(want.os_features)


def match_rank(want: Platform, have: Platform) -> int | None:
    """How well an image for `have` fits `want`: 0 is best, None is no match."""
    want = normalize_platform(want)
    have = normalize_platform(have)
    if have.os != want.os:
        return None
    if want.os == "windows" and not windows_version_compatible(want.os_version, have.os_version):
        return None
    if not _os_features_ok(want, have):
        return None
    have_key = _arch_variant(have)
    for rank, candidate in enumerate(compatible_variants(want)):
        if _arch_variant(candidate) == have_key:
            return rank
    return None


def _arch_variant(p: Platform) -> tuple[str, str | None]:
    # arm64 without a variant is arm64/v8.
    if p.architecture == "arm64" and p.variant is None:
        return "arm64", "v8"
    return p.architecture, p.variant


def platform_matches(want: Platform, have: Platform) -> bool:
    """Whether an image for `have` can run where `want` is wanted."""
    return match_rank(want, have) is not None


def platform_matches_image(want: Platform, image: Platform) -> bool:
    """Whether a pulled image, by the platform its config states, is what
    `want` asked for: moby's OnlyPlatformWithFallback, which also accepts a
    config without a variant for the wanted OS and architecture (configs often
    leave it out: an arm image says "arm", not "arm/v6")."""
    if platform_matches(want, image):
        return True
    if image.variant:
        return False
    want, image = normalize_platform(want), normalize_platform(image)
    return (want.os, want.architecture) == (image.os, image.architecture)


def _sort_key(want: Platform, have: Platform, rank: int) -> tuple[int, int, int, int]:
    windows_exact = 0
    windows_newer = 0
    if want.os == "windows":
        # moby on Windows prefers the host's exact build, then (containerd)
        # the newest compatible one.
        want_build = _windows_build(want.os_version)
        have_build = _windows_build(have.os_version)
        if want_build is not None and have_build != want_build:
            windows_exact = 1
        windows_newer = -(have_build[2] if have_build else 0)
    # containerd prefers the entry declaring more (matching) OS features.
    return rank, windows_exact, windows_newer, -len(have.os_features)


def rank_manifests(
    entries: Sequence[tuple[T, Platform | None]],
    want: Platform,
    *,
    include_unplatformed: bool = True,
) -> list[T]:
    """The entries that can run on `want`, best first.

    Exact variant first, then the fallbacks of compatible_variants(); the
    order of the input is kept among equals. Entries without a platform are
    kept last, as moby does, unless `include_unplatformed` is False.
    """
    want = normalize_platform(want)
    scored: list[tuple[tuple[int, int, int, int], int, T]] = []
    unplatformed: list[T] = []
    for index, (item, have) in enumerate(entries):
        if have is None:
            if include_unplatformed:
                unplatformed.append(item)
            continue
        have = normalize_platform(have)
        rank = match_rank(want, have)
        if rank is not None:
            scored.append((_sort_key(want, have, rank), index, item))
    scored.sort(key=lambda s: (s[0], s[1]))
    return [item for _, _, item in scored] + unplatformed
