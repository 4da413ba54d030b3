"""Tests of imgpull.platform: parsing, host detection, variant fallback, ranking.

Parse and Windows-compatibility cases are ported from containerd/platforms
(platforms_test.go, platform_windows_compat_test.go).
"""

from __future__ import annotations

import platform as stdlib_platform
import sys
from dataclasses import replace

import pytest

from imgpull.errors import ImgpullError
from imgpull.platform import (
    InvalidPlatformError,
    Platform,
    amd64_level,
    arm_variant_from_cpuinfo,
    compatible_variants,
    cpuinfo_flags,
    detect_platform,
    format_all,
    format_platform,
    host_platform,
    match_rank,
    normalize_platform,
    parse_platform,
    platform_from_dict,
    platform_matches,
    platform_matches_image,
    rank_manifests,
    windows_version_compatible,
)

HOST = Platform("linux", "amd64", "v3")

# (specifier, os, architecture, variant, str())
PARSE = [
    ("linux/amd64", "linux", "amd64", None, "linux/amd64"),
    ("linux/amd64/v1", "linux", "amd64", None, "linux/amd64"),
    ("linux/amd64/v2", "linux", "amd64", "v2", "linux/amd64/v2"),
    ("linux/amd64/v3", "linux", "amd64", "v3", "linux/amd64/v3"),
    ("linux/x86_64", "linux", "amd64", None, "linux/amd64"),
    ("linux/x86-64", "linux", "amd64", None, "linux/amd64"),
    ("Linux/x86_64", "linux", "amd64", None, "linux/amd64"),
    ("LINUX/AMD64/V3", "linux", "amd64", "v3", "linux/amd64/v3"),
    ("linux/arm64", "linux", "arm64", None, "linux/arm64"),
    ("linux/aarch64", "linux", "arm64", None, "linux/arm64"),
    ("linux/arm64/v8", "linux", "arm64", "v8", "linux/arm64/v8"),
    ("linux/arm64/8", "linux", "arm64", "v8", "linux/arm64/v8"),
    ("linux/arm64/v8.0", "linux", "arm64", "v8", "linux/arm64/v8"),
    ("linux/arm64/v8.2", "linux", "arm64", "v8.2", "linux/arm64/v8.2"),
    ("linux/arm64/9", "linux", "arm64", "v9", "linux/arm64/v9"),
    ("linux/aarch64/v9.0", "linux", "arm64", "v9", "linux/arm64/v9"),
    ("linux/arm", "linux", "arm", "v7", "linux/arm/v7"),
    ("linux/arm/v7", "linux", "arm", "v7", "linux/arm/v7"),
    ("linux/arm/7", "linux", "arm", "v7", "linux/arm/v7"),
    ("linux/arm/v6", "linux", "arm", "v6", "linux/arm/v6"),
    ("linux/arm/6", "linux", "arm", "v6", "linux/arm/v6"),
    ("linux/arm/5", "linux", "arm", "v5", "linux/arm/v5"),
    ("linux/arm/8", "linux", "arm", "v8", "linux/arm/v8"),
    ("linux/armhf", "linux", "arm", "v7", "linux/arm/v7"),
    ("linux/armel", "linux", "arm", "v6", "linux/arm/v6"),
    ("linux/i386", "linux", "386", None, "linux/386"),
    ("linux/386", "linux", "386", None, "linux/386"),
    ("linux/s390x", "linux", "s390x", None, "linux/s390x"),
    ("linux/ppc64le", "linux", "ppc64le", None, "linux/ppc64le"),
    ("linux/riscv64", "linux", "riscv64", None, "linux/riscv64"),
    ("windows/amd64", "windows", "amd64", None, "windows/amd64"),
    ("macos/arm64", "darwin", "arm64", None, "darwin/arm64"),
    # A single component is completed from the default (the host).
    ("arm", "linux", "arm", "v7", "linux/arm/v7"),
    ("armel", "linux", "arm", "v6", "linux/arm/v6"),
    ("armhf", "linux", "arm", "v7", "linux/arm/v7"),
    ("Aarch64", "linux", "arm64", None, "linux/arm64"),
    ("x86_64", "linux", "amd64", None, "linux/amd64"),
    ("i386", "linux", "386", None, "linux/386"),
    ("s390x", "linux", "s390x", None, "linux/s390x"),
    # A lone OS takes the host's architecture, without its amd64 level
    # (containerd's Parse: a variant only on arm).
    ("linux", "linux", "amd64", None, "linux/amd64"),
    ("macOS", "darwin", "amd64", None, "darwin/amd64"),
    ("windows", "windows", "amd64", None, "windows/amd64"),
]


@pytest.mark.parametrize(("spec", "os", "arch", "variant", "text"), PARSE)
def test_parse_platform(spec: str, os: str, arch: str, variant: str | None, text: str) -> None:
    p = parse_platform(spec, default=HOST)
    assert (p.os, p.architecture, p.variant) == (os, arch, variant)
    assert str(p) == text
    # The string form parses back to the same platform.
    assert parse_platform(str(p), default=HOST) == p


# (specifier, os_version, os_features): containerd's os(version+features) syntax.
PARSE_OS_OPTIONS = [
    ("windows()/amd64", None, ()),
    ("windows(10.0.17763)/amd64", "10.0.17763", ()),
    ("windows(10.0.17763+win32k)/amd64", "10.0.17763", ("win32k",)),
    ("linux(+gpu)/amd64", None, ("gpu",)),
    ("linux(+gpu+simd)/amd64", None, ("gpu", "simd")),
    ("linux(+unsorted+erofs)/amd64", None, ("erofs", "unsorted")),
    ("windows(10.0.17763%2Bbuild.42)/amd64", "10.0.17763+build.42", ()),
    ("windows(10.0.17763%2Bbuild.42+win32k)/amd64", "10.0.17763+build.42", ("win32k",)),
    ("windows(50%25done)/amd64", "50%done", ()),
    ("windows(10.0.17763)", "10.0.17763", ()),
]


@pytest.mark.parametrize(("spec", "os_version", "features"), PARSE_OS_OPTIONS)
def test_parse_os_options(spec: str, os_version: str | None, features: tuple[str, ...]) -> None:
    p = parse_platform(spec, default=HOST)
    assert (p.os_version, p.os_features) == (os_version, features)


PARSE_INVALID = [
    "",
    "/linux/arm",
    "linux/arm/",
    "linux /arm",
    "linux/&arm",
    "linux/arm/foo/bar",
    "*",
    "linux/*",
    "*/arm64",
    "nonsense",
    "arm(1.0)",
    "linux(++gpu)/amd64",
    "linux(" + "+" * 64 * 1024 + ")/amd64",
    "windows(50%zz)/amd64",
    "linux\n/amd64",
    # A dot between characters only (arm64's v8.2): no path games.
    "linux/../amd64",
    "linux/amd64/..",
    "linux/./amd64",
    "linux/arm64/.v8",
    "linux/arm64/v8.",
    "linux/arm64/v8..2",
]


@pytest.mark.parametrize("spec", PARSE_INVALID, ids=lambda s: repr(s[:20]))
def test_parse_platform_invalid(spec: str) -> None:
    with pytest.raises(InvalidPlatformError) as info:
        parse_platform(spec, default=HOST)
    assert isinstance(info.value, ImgpullError)
    assert isinstance(info.value, ValueError)
    # One line, and the input cut: a huge specifier is not echoed whole.
    message = str(info.value)
    assert "\n" not in message and len(message) < 400


def test_parse_platform_dot_dot_names_the_component() -> None:
    with pytest.raises(InvalidPlatformError, match=r"component '\.\.' must be letters"):
        parse_platform("linux/../amd64", default=HOST)


def test_parse_platform_defaults_to_host() -> None:
    host = host_platform()
    variant = host.variant if host.architecture == "arm" else None
    assert parse_platform("linux") == Platform("linux", host.architecture, variant)


def test_parse_lone_os_keeps_the_arm_variant_only() -> None:
    arm_v6 = Platform("linux", "arm", "v6")
    assert parse_platform("linux", default=arm_v6) == arm_v6
    assert parse_platform("linux", default=Platform("linux", "arm64", "v8")) == Platform(
        "linux", "arm64"
    )
    # A lone architecture takes the host's OS, not its version.
    win = Platform("windows", "amd64", None, "10.0.20348")
    assert parse_platform("arm64", default=win) == Platform("windows", "arm64")


def test_normalize_platform() -> None:
    raw = Platform("Linux", "AARCH64", "8", "", ("b", "a", "b"))
    assert normalize_platform(raw) == Platform("linux", "arm64", "v8", None, ("a", "b"))


# --- platform objects from manifest lists -----------------------------------------

FROM_DICT = [
    ({"os": "linux", "architecture": "amd64"}, Platform("linux", "amd64")),
    ({"os": "linux", "architecture": "arm", "variant": "v7"}, Platform("linux", "arm", "v7")),
    ({"os": "linux", "architecture": "arm"}, Platform("linux", "arm", "v7")),
    ({"os": "linux", "architecture": "arm64", "variant": ""}, Platform("linux", "arm64")),
    (
        {
            "os": "windows",
            "architecture": "amd64",
            "os.version": "10.0.17763.1234",
            "os.features": ["win32k"],
        },
        Platform("windows", "amd64", None, "10.0.17763.1234", ("win32k",)),
    ),
    (
        {"os": "linux", "architecture": "amd64", "features": ["sse4"]},
        Platform("linux", "amd64", features=("sse4",)),
    ),
]


@pytest.mark.parametrize(("obj", "expected"), FROM_DICT)
def test_platform_from_dict(obj: dict[str, object], expected: Platform) -> None:
    assert platform_from_dict(obj) == expected


@pytest.mark.parametrize(
    "obj",
    [
        {},
        {"os": "linux"},
        {"architecture": "amd64"},
        {"os": 1, "architecture": "amd64"},
        {"os": "linux", "architecture": "amd64", "variant": 7},
        {"os": "linux", "architecture": "amd64", "os.features": "gpu"},
        {"os": "linux", "architecture": "amd64", "os.features": [1]},
    ],
)
def test_platform_from_dict_invalid(obj: dict[str, object]) -> None:
    with pytest.raises(InvalidPlatformError):
        platform_from_dict(obj)


# --- the host -----------------------------------------------------------------------

V2 = "cx16 lahf_lm popcnt pni sse4_1 sse4_2 ssse3"
V3 = V2 + " avx avx2 bmi1 bmi2 f16c fma abm movbe xsave"
V4 = V3 + " avx512f avx512bw avx512cd avx512dq avx512vl"

AMD64_LEVELS = [
    ("", 1),
    ("fpu sse sse2", 1),
    (V2, 2),
    (V2.replace("popcnt", ""), 1),
    (V2.replace("pni", "sse3"), 2),
    (V2.replace("cx16", ""), 1),
    (V2.replace("lahf_lm", ""), 1),
    (V3, 3),
    (V3.replace("movbe", ""), 2),
    (V3.replace("abm", "lzcnt"), 3),
    (V3.replace("abm", ""), 2),
    (V3.replace("avx2", ""), 2),
    (V3.replace("fma", ""), 2),
    (V3.replace("xsave", ""), 2),
    (V4, 4),
    (V4.replace("avx512vl", ""), 3),
    (V4.replace("avx512bw", ""), 3),
    # Levels are cumulative: AVX-512 without the v3 set is still v2.
    (V4.replace("avx2", ""), 2),
    (V4.replace("ssse3", ""), 1),
    (V4.upper(), 4),
]


@pytest.mark.parametrize(("flags", "level"), AMD64_LEVELS)
def test_amd64_level(flags: str, level: int) -> None:
    assert amd64_level(flags.split()) == level


CPUINFO_X86 = (
    "processor\t: 0\nvendor_id\t: GenuineIntel\n"
    f"flags\t\t: fpu vme {V4} sha_ni\n\nprocessor\t: 1\nflags\t\t: fpu\n"
)


def test_cpuinfo_flags_reads_the_first_cpu() -> None:
    flags = cpuinfo_flags(CPUINFO_X86)
    assert "avx512vl" in flags and "sha_ni" in flags
    assert amd64_level(flags) == 4
    assert cpuinfo_flags("processor : 0\n") == frozenset()


PI_ZERO = (
    "processor\t: 0\nmodel name\t: ARMv6-compatible processor rev 7 (v6l)\n"
    "CPU architecture: 7\nCPU variant\t: 0x0\n"
)
PI_3 = "processor\t: 0\nmodel name\t: ARMv7 Processor rev 4 (v7l)\nCPU architecture: 7\n"

ARM_VARIANTS = [
    (PI_3, "armv7l", "v7"),
    (PI_ZERO, "armv6l", "v6"),
    ("CPU architecture: 8\n", "armv8l", "v8"),
    ("CPU architecture: 6\n", "armv6l", "v6"),
    ("CPU architecture: 6TEJ\n", "armv6l", "v6"),
    ("CPU architecture: 5TEJ\n", "armv5tel", "v5"),
    ("CPU architecture: 5te\n", "", "v5"),
    ("CPU architecture: 7M\n", "", "v7"),
    ("CPU architecture: ?(12)\n", "", "v7"),
    ("CPU architecture: AArch64\n", "", "v8"),
    ("CPU architecture: 4T\n", "", "v4"),
    ("", "armv7l", "v7"),
    ("", "armv6l", "v6"),
    ("", "armv5tel", "v5"),
    ("", "aarch64", "v8"),
    ("", "mips", None),
    ("CPU architecture: weird\n", "armv7l", None),
]


@pytest.mark.parametrize(("cpuinfo", "machine", "variant"), ARM_VARIANTS)
def test_arm_variant_from_cpuinfo(cpuinfo: str, machine: str, variant: str | None) -> None:
    assert arm_variant_from_cpuinfo(cpuinfo, machine) == variant


DETECT = [
    ("linux", "x86_64", CPUINFO_X86, None, "linux/amd64/v4"),
    ("linux", "x86_64", f"flags : {V3}\n", None, "linux/amd64/v3"),
    ("linux", "x86_64", f"flags : {V2}\n", None, "linux/amd64/v2"),
    ("linux", "x86_64", "", None, "linux/amd64"),
    ("linux", "aarch64", "", None, "linux/arm64/v8"),
    ("linux", "armv7l", PI_3, None, "linux/arm/v7"),
    ("linux", "armv6l", PI_ZERO, None, "linux/arm/v6"),
    ("linux", "armv8l", "", None, "linux/arm/v8"),
    ("linux", "armv7l", "", None, "linux/arm/v7"),
    ("linux", "i686", "", None, "linux/386"),
    ("linux", "ppc64le", "", None, "linux/ppc64le"),
    ("linux", "s390x", "", None, "linux/s390x"),
    ("linux", "riscv64", "", None, "linux/riscv64"),
    ("linux", "loongarch64", "", None, "linux/loong64"),
    # Docker on a Mac runs Linux images.
    ("darwin", "arm64", "", None, "linux/arm64/v8"),
    ("darwin", "x86_64", "", None, "linux/amd64"),
    ("win32", "AMD64", "", "10.0.20348", "windows/amd64"),
    ("freebsd14", "amd64", "", None, "freebsd/amd64"),
]


@pytest.mark.parametrize(("system", "machine", "cpuinfo", "osv", "expected"), DETECT)
def test_detect_platform(
    system: str, machine: str, cpuinfo: str, osv: str | None, expected: str
) -> None:
    p = detect_platform(system, machine, cpuinfo, osv)
    assert str(p) == expected
    assert p.os_version == (osv if p.os == "windows" else None)


def test_host_platform() -> None:
    p = host_platform()
    assert p == normalize_platform(p)
    if sys.platform.startswith(("linux", "darwin")):
        assert p.os == "linux"
    if stdlib_platform.machine() == "x86_64" and sys.platform.startswith("linux"):
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            level = amd64_level(cpuinfo_flags(f.read()))
        assert p.architecture == "amd64"
        assert p.variant == (f"v{level}" if level > 1 else None)


# --- variant fallback -------------------------------------------------------------

# (wanted, its fallback list, best first): containerd's platformVector.
ARM_FALLBACK = ["linux/arm/v8", "linux/arm/v7", "linux/arm/v6", "linux/arm/v5"]
COMPATIBLE = [
    ("linux/arm/v8", ARM_FALLBACK),
    ("linux/arm/v7", ARM_FALLBACK[1:]),
    ("linux/arm", ARM_FALLBACK[1:]),
    ("linux/arm/v6", ARM_FALLBACK[2:]),
    ("linux/arm/v5", ARM_FALLBACK[3:]),
    ("linux/arm/v4", ["linux/arm/v4"]),
    ("linux/arm64", ["linux/arm64/v8", *ARM_FALLBACK]),
    ("linux/arm64/v8", ["linux/arm64/v8", *ARM_FALLBACK]),
    ("linux/arm64/v8.2", ["linux/arm64/v8.2", "linux/arm64/v8.1", "linux/arm64/v8", *ARM_FALLBACK]),
    (
        "linux/arm64/v9",
        [
            "linux/arm64/v9",
            *(f"linux/arm64/v8.{n}" for n in range(5, 0, -1)),
            "linux/arm64/v8",
            *ARM_FALLBACK,
        ],
    ),
    (
        "linux/arm64/v9.1",
        [
            "linux/arm64/v9.1",
            "linux/arm64/v9",
            *(f"linux/arm64/v8.{n}" for n in range(6, 0, -1)),
            "linux/arm64/v8",
            *ARM_FALLBACK,
        ],
    ),
    # An arm64 variant containerd has no table entry for matches nothing.
    ("linux/arm64/v8.10", []),
    ("linux/arm64/v10", []),
    ("linux/amd64", ["linux/amd64", "linux/386"]),
    ("linux/amd64/v1", ["linux/amd64", "linux/386"]),
    ("linux/amd64/v2", ["linux/amd64/v2", "linux/amd64", "linux/386"]),
    ("linux/amd64/v3", ["linux/amd64/v3", "linux/amd64/v2", "linux/amd64", "linux/386"]),
    (
        "linux/amd64/v4",
        ["linux/amd64/v4", "linux/amd64/v3", "linux/amd64/v2", "linux/amd64", "linux/386"],
    ),
    ("linux/amd64/vx", ["linux/amd64/vx", "linux/386"]),
    ("linux/386", ["linux/386"]),
    ("linux/ppc64le", ["linux/ppc64le"]),
    ("linux/s390x", ["linux/s390x"]),
    ("windows/amd64", ["windows/amd64", "windows/386"]),
]


@pytest.mark.parametrize(("spec", "expected"), COMPATIBLE)
def test_compatible_variants(spec: str, expected: list[str]) -> None:
    want = parse_platform(spec, default=HOST)
    got = compatible_variants(want)
    assert [str(p) for p in got] == expected
    assert all(p.os == want.os and p.os_version == want.os_version for p in got)


def test_huge_variant_numbers_get_no_fallback() -> None:
    """The fallback list is as long as the level: absurd levels get none."""
    assert [str(p) for p in compatible_variants(Platform("linux", "amd64", "v65"))] == [
        "linux/amd64/v65",
        "linux/386",
    ]
    assert len(compatible_variants(Platform("linux", "arm", "v" + "9" * 5000))) == 1
    assert len(compatible_variants(Platform("linux", "amd64", "v64"))) == 65


# containerd compare_test.go TestOnly: wanted -> (entries that match, entries that do not).
ONLY: list[tuple[str, list[str], list[str]]] = [
    (
        "linux/amd64",
        ["linux/amd64", "linux/386"],
        ["linux/amd64/v2", "linux/arm/v7", "linux/arm64", "windows/amd64", "windows/arm"],
    ),
    (
        "linux/amd64/v2",
        ["linux/amd64", "linux/amd64/v1", "linux/amd64/v2", "linux/386"],
        [
            "linux/amd64/v3",
            "linux/amd64/v4",
            "linux/arm/v7",
            "linux/arm64",
            "windows/amd64",
            "windows/arm",
        ],
    ),
    (
        "linux/386",
        ["linux/386"],
        ["linux/amd64", "linux/arm/v7", "linux/arm64", "windows/amd64", "windows/arm"],
    ),
    (
        "windows/amd64",
        ["windows/amd64", "windows(10.0.17763)/amd64"],
        ["linux/amd64", "linux/arm/v7", "linux/arm64", "windows/arm"],
    ),
    (
        "linux/arm/v8",
        ["linux/arm", "linux/arm/v5", "linux/arm/v6", "linux/arm/v7", "linux/arm/v8"],
        ["linux/amd64", "linux/arm/v4", "linux/arm64", "windows/amd64", "windows/arm"],
    ),
    (
        "linux/arm/v7",
        ["linux/arm", "linux/arm/v5", "linux/arm/v6", "linux/arm/v7"],
        [
            "linux/amd64",
            "linux/arm/v4",
            "linux/arm/v8",
            "linux/arm64",
            "windows/amd64",
            "windows/arm",
        ],
    ),
    (
        "linux/arm/v6",
        ["linux/arm/v5", "linux/arm/v6"],
        [
            "linux/amd64",
            "linux/arm",
            "linux/arm/v4",
            "linux/arm/v7",
            "linux/arm/v8",
            "linux/arm64",
            "windows/amd64",
            "windows/arm",
        ],
    ),
    (
        "linux/arm/v5",
        ["linux/arm/v5"],
        [
            "linux/amd64",
            "linux/arm",
            "linux/arm/v4",
            "linux/arm/v6",
            "linux/arm/v7",
            "linux/arm/v8",
            "linux/arm64",
            "windows/amd64",
            "windows/arm",
        ],
    ),
    (
        "linux/arm/v4",
        ["linux/arm/v4"],
        [
            "linux/amd64",
            "linux/arm",
            "linux/arm/v5",
            "linux/arm/v6",
            "linux/arm/v7",
            "linux/arm/v8",
            "linux/arm64",
            "windows/amd64",
            "windows/arm",
        ],
    ),
    (
        "linux/arm64/v9.6",
        [
            *ARM_FALLBACK,
            "linux/arm",
            "linux/arm64",
            "linux/arm64/v8",
            *(f"linux/arm64/v8.{n}" for n in range(1, 10)),
            "linux/arm64/v9",
            *(f"linux/arm64/v9.{n}" for n in range(7)),
        ],
        ["linux/amd64", "linux/arm/v4", "windows/amd64", "windows/arm", "linux/arm64/v8.10"],
    ),
    (
        "linux/arm64/v9",
        [
            *ARM_FALLBACK,
            "linux/arm",
            "linux/arm64",
            "linux/arm64/v8",
            *(f"linux/arm64/v8.{n}" for n in range(1, 6)),
            "linux/arm64/v9",
            "linux/arm64/v9.0",
        ],
        ["linux/amd64", "linux/arm/v4", "windows/amd64", "windows/arm", "linux/arm64/v8.6"],
    ),
    (
        "linux/arm64/v8.1",
        [*ARM_FALLBACK, "linux/arm", "linux/arm64", "linux/arm64/v8", "linux/arm64/v8.1"],
        [
            "linux/amd64",
            "linux/arm/v4",
            "linux/arm/v9",
            "linux/arm64/v9",
            "windows/amd64",
            "windows/arm",
        ],
    ),
    (
        "linux/arm64",
        [*ARM_FALLBACK, "linux/arm", "linux/arm64", "linux/arm64/v8"],
        [
            "linux/amd64",
            "linux/arm/v4",
            "linux/arm/v9",
            "linux/arm64/v9",
            "windows/amd64",
            "windows/arm",
        ],
    ),
]


@pytest.mark.parametrize(("want", "match", "no_match"), ONLY, ids=[w for w, _, _ in ONLY])
def test_only_matches_as_containerd(want: str, match: list[str], no_match: list[str]) -> None:
    w = parse_platform(want, default=HOST)
    for have in match:
        assert platform_matches(w, parse_platform(have, default=HOST)), have
    for have in no_match:
        assert not platform_matches(w, parse_platform(have, default=HOST)), have


# (wanted, entry, matches?)
MATCHES = [
    ("linux/amd64", "linux/amd64", True),
    ("linux/amd64", "linux/amd64/v1", True),
    ("linux/amd64", "linux/x86_64", True),
    ("linux/amd64", "linux/amd64/v2", False),
    ("linux/amd64/v3", "linux/amd64", True),
    ("linux/amd64/v3", "linux/amd64/v2", True),
    ("linux/amd64/v3", "linux/amd64/v4", False),
    ("linux/amd64/v3", "linux/386", True),
    ("linux/amd64", "linux/i386", True),
    ("linux/386", "linux/amd64", False),
    ("linux/arm64", "linux/arm64", True),
    ("linux/arm64", "linux/arm64/v8", True),
    ("linux/arm64", "linux/arm/v8", True),
    ("linux/arm64", "linux/armhf", True),
    ("linux/arm64/v8", "linux/arm64", True),
    ("linux/arm64/v8", "linux/aarch64", True),
    ("linux/arm64/v8", "linux/arm64/v8.2", False),
    ("linux/arm64/v8.2", "linux/arm64", True),
    ("linux/arm/v8", "linux/arm64", False),
    ("linux/arm/v7", "linux/arm", True),
    ("linux/arm/v7", "linux/arm/v6", True),
    ("linux/arm/v7", "linux/arm/v8", False),
    ("linux/arm/v6", "linux/arm", False),
    ("linux/arm/v8", "linux/arm/v5", True),
    ("linux/amd64", "windows/amd64", False),
    ("linux/amd64", "windows/386", False),
    ("windows/amd64", "linux/amd64", False),
    ("linux/ppc64le", "linux/ppc64le", True),
    ("linux/amd64", "unknown/unknown", False),
]


@pytest.mark.parametrize(("want", "have", "ok"), MATCHES)
def test_platform_matches(want: str, have: str, ok: bool) -> None:
    w = parse_platform(want, default=HOST)
    h = Platform("unknown", "unknown") if have == "unknown/unknown" else parse_platform(have)
    assert platform_matches(w, h) is ok
    assert (match_rank(w, h) is not None) is ok


# moby's OnlyPlatformWithFallback: (wanted, the image config's os/arch/variant, matches?)
IMAGE_MATCHES = [
    ("linux/amd64", Platform("linux", "amd64"), True),
    ("linux/arm64", Platform("linux", "amd64"), False),
    ("linux/arm64", Platform("linux", "arm64", "v8"), True),
    ("linux/arm64", Platform("linux", "arm", "v7"), True),
    # A config without a variant fits any variant of its architecture...
    ("linux/arm/v6", Platform("linux", "arm"), True),
    ("linux/amd64", Platform("linux", "amd64", "v3"), False),
    # ...one with a variant must match.
    ("linux/arm/v6", Platform("linux", "arm", "v7"), False),
    ("linux/amd64", Platform("windows", "amd64"), False),
]


@pytest.mark.parametrize(("want", "image", "ok"), IMAGE_MATCHES)
def test_platform_matches_image(want: str, image: Platform, ok: bool) -> None:
    assert platform_matches_image(parse_platform(want, default=HOST), image) is ok


FORMAT_ALL = [
    (Platform("windows", "arm64", "v8", "10.0.17763"), "windows(10.0.17763)/arm64/v8"),
    (Platform("linux", "amd64"), "linux/amd64"),
    (Platform("linux", "amd64", os_features=("gpu", "a", "gpu")), "linux(+a+gpu)/amd64"),
    (
        Platform("windows", "amd64", None, "1+(2)/%", ("x/y",)),
        "windows(1%2B%282%29%2F%25+x%2Fy)/amd64",
    ),
    (Platform("", "amd64"), "unknown"),
]


@pytest.mark.parametrize(("p", "text"), FORMAT_ALL)
def test_format_all(p: Platform, text: str) -> None:
    assert format_all(p) == text
    if p.os:
        assert parse_platform(text, default=HOST) == normalize_platform(p)
    assert format_platform(p) == (
        str(replace(p, os_version=None, os_features=())) if p.os else "unknown"
    )


def test_os_features() -> None:
    plain = Platform("linux", "amd64")
    gpu = Platform("linux", "amd64", os_features=("gpu",))
    assert not platform_matches(plain, gpu)
    assert platform_matches(gpu, plain)
    assert platform_matches(gpu, gpu)
    # win32k is ignored on Windows entries: every Windows host has it.
    win = Platform("windows", "amd64", os_version="10.0.17763")
    assert platform_matches(win, Platform("windows", "amd64", None, "10.0.17763.1", ("win32k",)))


# --- Windows versions ---------------------------------------------------------------

LTSC2019, LTSC2022, WIN11_22H2, V23H2, LTSC2025 = 17763, 20348, 22621, 25398, 26100

# containerd platform_windows_compat_test.go Test_PlatformCompat: (host, image, runs)
WINDOWS_COMPAT = [
    (LTSC2019, LTSC2019, True),
    (LTSC2019, LTSC2022, False),
    (LTSC2022, LTSC2019, False),
    (LTSC2022, LTSC2022, True),
    (WIN11_22H2, LTSC2019, False),
    (WIN11_22H2, LTSC2022, True),
    (V23H2, LTSC2019, False),
    (V23H2, LTSC2022, True),
    (LTSC2025, LTSC2022, True),
    (LTSC2022, LTSC2025, False),
    (LTSC2022, WIN11_22H2, False),
    (LTSC2025, WIN11_22H2, True),
]


@pytest.mark.parametrize(("host", "image", "runs"), WINDOWS_COMPAT)
def test_windows_compat(host: int, image: int, runs: bool) -> None:
    assert windows_version_compatible(f"10.0.{host}", f"10.0.{image}.1234") is runs
    want = Platform("windows", "amd64", os_version=f"10.0.{host}")
    have = Platform("windows", "amd64", os_version=f"10.0.{image}.1234")
    assert platform_matches(want, have) is runs


@pytest.mark.parametrize(
    ("host", "image", "runs"),
    [
        (None, "10.0.17763.1", True),
        ("10.0.17763", None, True),
        ("10.0.17763", "", True),
        ("garbage", "10.0.17763.1", True),
        ("10.0.17763", "6.3.17763.1", False),
        ("10.0.17763.100", "10.0.17763.9999", True),
    ],
)
def test_windows_compat_unknown(host: str | None, image: str | None, runs: bool) -> None:
    assert windows_version_compatible(host, image) is runs


# --- ranking manifest-list entries -----------------------------------------------

INDEX: list[tuple[str, Platform | None]] = [
    ("amd64", Platform("linux", "amd64")),
    ("amd64-v2", Platform("linux", "amd64", "v2")),
    ("amd64-v3", Platform("linux", "amd64", "v3")),
    ("amd64-v4", Platform("linux", "amd64", "v4")),
    ("arm64", Platform("linux", "arm64", "v8")),
    ("arm-v7", Platform("linux", "arm", "v7")),
    ("arm-v6", Platform("linux", "arm", "v6")),
    ("arm-v5", Platform("linux", "arm", "v5")),
    ("386", Platform("linux", "386")),
    ("s390x", Platform("linux", "s390x")),
    ("win", Platform("windows", "amd64", None, "10.0.17763.4010")),
    ("attestation", Platform("unknown", "unknown")),
    ("no-platform", None),
]

RANK = [
    ("linux/amd64", ["amd64", "386", "no-platform"]),
    ("linux/amd64/v2", ["amd64-v2", "amd64", "386", "no-platform"]),
    ("linux/amd64/v3", ["amd64-v3", "amd64-v2", "amd64", "386", "no-platform"]),
    ("linux/amd64/v4", ["amd64-v4", "amd64-v3", "amd64-v2", "amd64", "386", "no-platform"]),
    ("linux/arm64", ["arm64", "arm-v7", "arm-v6", "arm-v5", "no-platform"]),
    ("linux/arm64/v8", ["arm64", "arm-v7", "arm-v6", "arm-v5", "no-platform"]),
    ("linux/arm/v8", ["arm-v7", "arm-v6", "arm-v5", "no-platform"]),
    ("linux/arm/v7", ["arm-v7", "arm-v6", "arm-v5", "no-platform"]),
    ("linux/arm/v6", ["arm-v6", "arm-v5", "no-platform"]),
    ("linux/386", ["386", "no-platform"]),
    ("linux/s390x", ["s390x", "no-platform"]),
    ("linux/riscv64", ["no-platform"]),
    ("windows(10.0.17763)/amd64", ["win", "no-platform"]),
    ("windows(10.0.20348)/amd64", ["no-platform"]),
    ("windows/amd64", ["win", "no-platform"]),
]


@pytest.mark.parametrize(("spec", "expected"), RANK)
def test_rank_manifests(spec: str, expected: list[str]) -> None:
    want = parse_platform(spec, default=HOST)
    assert rank_manifests(INDEX, want) == expected
    assert rank_manifests(INDEX, want, include_unplatformed=False) == [
        x for x in expected if x != "no-platform"
    ]


def test_rank_is_stable_among_equals() -> None:
    entries = [
        ("v2-a", Platform("linux", "amd64", "v2")),
        ("v1-a", Platform("linux", "amd64")),
        ("v2-b", Platform("linux", "amd64", "v2")),
        ("v1-b", Platform("linux", "amd64", "v1")),
        ("v3-a", Platform("linux", "amd64", "v3")),
    ]
    assert rank_manifests(entries, Platform("linux", "amd64", "v3")) == [
        "v3-a",
        "v2-a",
        "v2-b",
        "v1-a",
        "v1-b",
    ]


def test_rank_arm64_without_variant_equals_v8() -> None:
    entries = [
        ("plain", Platform("linux", "arm64")),
        ("v8", Platform("linux", "arm64", "v8")),
        ("aarch64", Platform("linux", "aarch64", "8")),
    ]
    assert rank_manifests(entries, Platform("linux", "arm64")) == ["plain", "v8", "aarch64"]
    assert rank_manifests(entries, Platform("linux", "arm64", "v8")) == [
        "plain",
        "v8",
        "aarch64",
    ]


def test_rank_prefers_more_os_features() -> None:
    entries = [
        ("plain", Platform("linux", "amd64")),
        ("gpu", Platform("linux", "amd64", os_features=("gpu",))),
        ("other", Platform("linux", "amd64", os_features=("other",))),
    ]
    want = Platform("linux", "amd64", os_features=("gpu",))
    assert rank_manifests(entries, want) == ["gpu", "plain"]


def test_rank_windows_prefers_exact_build_then_newest() -> None:
    entries = [
        ("2022", Platform("windows", "amd64", None, "10.0.20348.100")),
        ("2019", Platform("windows", "amd64", None, "10.0.17763.100")),
        ("11", Platform("windows", "amd64", None, "10.0.22621.100")),
        ("2025", Platform("windows", "amd64", None, "10.0.26100.100")),
        ("any", Platform("windows", "amd64")),
    ]
    want = Platform("windows", "amd64", os_version="10.0.26100")
    assert rank_manifests(entries, want) == ["2025", "11", "2022", "any"]


def test_rank_empty() -> None:
    assert rank_manifests([], HOST) == []
