"""Tests of imgpull.platform: parsing, host detection, variant fallback, ranking.

Parse and Windows-compatibility cases are ported from containerd/platforms
(platforms_test.go, platform_windows_compat_test.go).
"""

from __future__ import annotations

import platform as stdlib_platform
import sys

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
    host_platform,
    match_rank,
    normalize_platform,
    parse_platform,
    platform_from_dict,
    platform_matches,
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
    ("linux", "linux", "amd64", "v3", "linux/amd64/v3"),
    ("macOS", "darwin", "amd64", "v3", "darwin/amd64/v3"),
    ("windows", "windows", "amd64", "v3", "windows/amd64/v3"),
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
]


@pytest.mark.parametrize("spec", PARSE_INVALID, ids=lambda s: repr(s[:20]))
def test_parse_platform_invalid(spec: str) -> None:
    with pytest.raises(InvalidPlatformError) as info:
        parse_platform(spec, default=HOST)
    assert isinstance(info.value, ImgpullError)
    assert isinstance(info.value, ValueError)


def test_parse_platform_defaults_to_host() -> None:
    assert parse_platform("linux") == replace_os(host_platform(), "linux")


def replace_os(p: Platform, os: str) -> Platform:
    return Platform(os, p.architecture, p.variant, p.os_version)


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

COMPATIBLE = [
    ("linux/arm/v8", ["v8", "v7", "v6", "v5"]),
    ("linux/arm/v7", ["v7", "v6", "v5"]),
    ("linux/arm", ["v7", "v6", "v5"]),
    ("linux/arm/v6", ["v6", "v5"]),
    ("linux/arm/v5", ["v5"]),
    ("linux/arm64", ["v8"]),
    ("linux/arm64/v8", ["v8"]),
    ("linux/arm64/v8.2", ["v8.2", "v8.1", "v8"]),
    ("linux/arm64/v9", ["v9", "v8.5", "v8.4", "v8.3", "v8.2", "v8.1", "v8"]),
    ("linux/arm64/v9.1", ["v9.1", "v9", "v8.6", "v8.5", "v8.4", "v8.3", "v8.2", "v8.1", "v8"]),
    ("linux/amd64", [None]),
    ("linux/amd64/v1", [None]),
    ("linux/amd64/v2", ["v2", None]),
    ("linux/amd64/v3", ["v3", "v2", None]),
    ("linux/amd64/v4", ["v4", "v3", "v2", None]),
    ("linux/386", [None]),
    ("linux/ppc64le", [None]),
    ("linux/s390x", [None]),
    ("windows/amd64", [None]),
]


@pytest.mark.parametrize(("spec", "variants"), COMPATIBLE)
def test_compatible_variants(spec: str, variants: list[str | None]) -> None:
    want = parse_platform(spec, default=HOST)
    got = compatible_variants(want)
    assert [p.variant for p in got] == variants
    assert all((p.os, p.architecture) == (want.os, want.architecture) for p in got)


# (wanted, entry, matches?)
MATCHES = [
    ("linux/amd64", "linux/amd64", True),
    ("linux/amd64", "linux/amd64/v1", True),
    ("linux/amd64", "linux/x86_64", True),
    ("linux/amd64", "linux/amd64/v2", False),
    ("linux/amd64/v3", "linux/amd64", True),
    ("linux/amd64/v3", "linux/amd64/v2", True),
    ("linux/amd64/v3", "linux/amd64/v4", False),
    # Same architecture only: no 386 on amd64, no arm on arm64 (see module doc).
    ("linux/amd64", "linux/386", False),
    ("linux/arm64", "linux/arm/v7", False),
    ("linux/arm64", "linux/arm64", True),
    ("linux/arm64", "linux/arm64/v8", True),
    ("linux/arm64/v8", "linux/arm64", True),
    ("linux/arm64/v8", "linux/aarch64", True),
    ("linux/arm64/v8", "linux/arm64/v8.2", False),
    ("linux/arm64/v8.2", "linux/arm64", True),
    ("linux/arm/v7", "linux/arm", True),
    ("linux/arm/v7", "linux/arm/v6", True),
    ("linux/arm/v7", "linux/arm/v8", False),
    ("linux/arm/v6", "linux/arm", False),
    ("linux/arm/v8", "linux/arm/v5", True),
    ("linux/amd64", "windows/amd64", False),
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
    ("linux/amd64", ["amd64", "no-platform"]),
    ("linux/amd64/v2", ["amd64-v2", "amd64", "no-platform"]),
    ("linux/amd64/v3", ["amd64-v3", "amd64-v2", "amd64", "no-platform"]),
    ("linux/amd64/v4", ["amd64-v4", "amd64-v3", "amd64-v2", "amd64", "no-platform"]),
    ("linux/arm64", ["arm64", "no-platform"]),
    ("linux/arm64/v8", ["arm64", "no-platform"]),
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
