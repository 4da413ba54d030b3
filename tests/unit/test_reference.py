"""Tests of imgpull.reference.

Most cases are ported from distribution/reference (reference_test.go,
normalize_test.go, regexp_test.go), with the results that *normalised*
parsing (ParseNormalizedNamed, what docker pull uses) gives for them.
Where imgpull deliberately differs from upstream, the case says so.
"""

from __future__ import annotations

import time

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from imgpull.errors import InvalidReferenceError
from imgpull.reference import Reference, parse_reference, registry_host

F64 = "f" * 64
D_F = "sha256:" + F64
D_BE = "sha256:be178c0543eb17f5f3043021c9e5fcf30285e557a4fc309cce97ff9ca6182912"
D_86 = "sha256:86e0e091d0da6bde2456dbb48306f3956bbeb2eae1b5b9a43045843f69fe4aaa"
D_DB = "sha256:dbcc1c35ac38df41fd2f5e4130b32ffdb93ebae8b3dbe638c23575912276fc9c"
D_E6 = "sha256:e6693c20186f837fc393390135d8a598a96a833917917789d63766cab6c59582"
D_512 = "sha512:" + "f" * 128
HEX64 = "1a3f5e7d9c1b3a5f7e9d1c3b5a7f9e1d3c5b7a9f1e3d5d7c9b1a3f5e7d9c1b3a"


def parse(s: str) -> Reference:
    """Parse without adding the default tag, as upstream's tests do."""
    return parse_reference(s, default_tag=None)


# (input, domain, path, tag, digest): reference_test.go TestReferenceParse,
# regexp_test.go TestReferenceRegexp / TestIdentifierRegexp, normalised.
VALID = [
    ("test_com", "docker.io", "library/test_com", None, None),
    ("test.com:tag", "docker.io", "library/test.com", "tag", None),
    ("test.com:5000", "docker.io", "library/test.com", "5000", None),
    ("test.com/repo:tag", "test.com", "repo", "tag", None),
    ("test:5000/repo", "test:5000", "repo", None, None),
    ("test:5000/repo:tag", "test:5000", "repo", "tag", None),
    ("test:5000/repo@" + D_F, "test:5000", "repo", None, D_F),
    ("test:5000/repo:tag@" + D_F, "test:5000", "repo", "tag", D_F),
    # Upstream refuses sha512 only because its test binary does not register it.
    ("validname@" + D_512, "docker.io", "library/validname", None, D_512),
    # Upstream FIXME: an upper-case first component is taken as a domain.
    ("Uppercase/lowercase:tag", "Uppercase", "lowercase", "tag", None),
    ("lowercase:Uppercase", "docker.io", "library/lowercase", "Uppercase", None),
    (
        "a/" * 127 + "a:tag-puts-this-over-max",
        "docker.io",
        "a/" * 127 + "a",
        "tag-puts-this-over-max",
        None,
    ),
    ("sub-dom1.foo.com/bar/baz/quux", "sub-dom1.foo.com", "bar/baz/quux", None, None),
    (
        "sub-dom1.foo.com/bar/baz/quux:some-long-tag",
        "sub-dom1.foo.com",
        "bar/baz/quux",
        "some-long-tag",
        None,
    ),
    (
        "b.gcr.io/test.example.com/my-app:test.example.com",
        "b.gcr.io",
        "test.example.com/my-app",
        "test.example.com",
        None,
    ),
    ("xn--n3h.com/myimage:xn--n3h.com", "xn--n3h.com", "myimage", "xn--n3h.com", None),
    (
        "xn--7o8h.com/myimage:xn--7o8h.com@" + D_F,
        "xn--7o8h.com",
        "myimage",
        "xn--7o8h.com",
        D_F,
    ),
    ("foo_bar.com:8080", "docker.io", "library/foo_bar.com", "8080", None),
    ("foo/foo_bar.com:8080", "docker.io", "foo/foo_bar.com", "8080", None),
    ("192.168.1.1", "docker.io", "library/192.168.1.1", None, None),
    ("192.168.1.1:tag", "docker.io", "library/192.168.1.1", "tag", None),
    ("192.168.1.1:5000", "docker.io", "library/192.168.1.1", "5000", None),
    ("192.168.1.1/repo", "192.168.1.1", "repo", None, None),
    ("192.168.1.1:5000/repo", "192.168.1.1:5000", "repo", None, None),
    ("192.168.1.1:5000/repo:5050", "192.168.1.1:5000", "repo", "5050", None),
    ("[2001:db8::1]/repo", "[2001:db8::1]", "repo", None, None),
    ("[2001:db8:1:2:3:4:5:6]/repo:tag", "[2001:db8:1:2:3:4:5:6]", "repo", "tag", None),
    ("[2001:db8::1]:5000/repo", "[2001:db8::1]:5000", "repo", None, None),
    ("[2001:db8::1]:5000/repo:tag", "[2001:db8::1]:5000", "repo", "tag", None),
    ("[2001:db8::1]:5000/repo@" + D_F, "[2001:db8::1]:5000", "repo", None, D_F),
    ("[2001:db8::1]:5000/repo:tag@" + D_F, "[2001:db8::1]:5000", "repo", "tag", D_F),
    ("[2001:db8::]:5000/repo", "[2001:db8::]:5000", "repo", None, None),
    ("[::1]:5000/repo", "[::1]:5000", "repo", None, None),
    ("example.com/" + "a" * 255 + ":tag", "example.com", "a" * 255, "tag", None),
    # regexp_test.go TestReferenceRegexp
    ("registry.com:8080/myapp:tag", "registry.com:8080", "myapp", "tag", None),
    ("registry.com:8080/myapp@" + D_BE, "registry.com:8080", "myapp", None, D_BE),
    ("registry.com:8080/myapp:tag2@" + D_BE, "registry.com:8080", "myapp", "tag2", D_BE),
    # "localhost" without a slash is a name, and 8080 its tag.
    ("localhost:8080@" + D_BE, "docker.io", "library/localhost", "8080", D_BE),
    ("localhost:8080/name@" + D_BE, "localhost:8080", "name", None, D_BE),
    ("localhost@" + D_BE, "docker.io", "library/localhost", None, D_BE),
    # TestIdentifierRegexp: only exactly 64 lower-case hex digits are refused.
    (HEX64[:60], "docker.io", "library/" + HEX64[:60], None, None),
    (HEX64 + "8218", "docker.io", "library/" + HEX64 + "8218", None, None),
    ("sha256:" + HEX64, "docker.io", "library/sha256", HEX64, None),
    # normalize_test.go TestParseAnyReference (the name forms)
    ("redis", "docker.io", "library/redis", None, None),
    ("redis:latest", "docker.io", "library/redis", "latest", None),
    ("docker.io/library/redis:latest", "docker.io", "library/redis", "latest", None),
    ("redis@" + D_DB, "docker.io", "library/redis", None, D_DB),
    ("docker.io/library/redis@" + D_DB, "docker.io", "library/redis", None, D_DB),
    ("dmcgowan/myapp", "docker.io", "dmcgowan/myapp", None, None),
    ("dmcgowan/myapp:latest", "docker.io", "dmcgowan/myapp", "latest", None),
    ("docker.io/mcgowan/myapp:latest", "docker.io", "mcgowan/myapp", "latest", None),
    ("dmcgowan/myapp@" + D_DB, "docker.io", "dmcgowan/myapp", None, D_DB),
    ("docker.io/dmcgowan/myapp@" + D_DB, "docker.io", "dmcgowan/myapp", None, D_DB),
    (D_DB[7:-1], "docker.io", "library/" + D_DB[7:-1], None, None),
    ("dbcc1", "docker.io", "library/dbcc1", None, None),
    # Tag edge cases: 128 characters max, word characters, '.' and '-'.
    ("foo:" + "t" * 128, "docker.io", "library/foo", "t" * 128, None),
    ("foo:_x.Y-z", "docker.io", "library/foo", "_x.Y-z", None),
    ("foo:1.0", "docker.io", "library/foo", "1.0", None),
]


@pytest.mark.parametrize(("text", "domain", "path", "tag", "digest"), VALID)
def test_parse_valid(
    text: str, domain: str, path: str, tag: str | None, digest: str | None
) -> None:
    ref = parse(text)
    assert (ref.domain, ref.path, ref.tag, ref.digest) == (domain, path, tag, digest)
    assert ref.name == f"{domain}/{path}"
    assert ref.repository == path
    # The string form parses back to the same reference.
    assert parse(str(ref)) == ref
    assert parse(ref.familiar()) == ref


# (input, a fragment of the message): every one is InvalidReferenceError.
INVALID = [
    ("", "at least one component"),
    (":justtag", "empty path component"),
    ("@" + D_F, "empty path component"),
    ("repo@sha256:" + "f" * 34, "wrong length"),
    ("validname@invaliddigest:" + F64, "unsupported digest algorithm (invaliddigest)"),
    ("validname@md5:" + "f" * 32, "unsupported digest algorithm (md5)"),
    ("validname@sha384:" + "f" * 96, "unsupported digest algorithm (sha384)"),
    ("validname@sha256:" + "F" * 64, "lower-case hex"),
    ("validname@sha256:" + "g" * 64, "hex digits"),
    ("validname@sha256", "must be algorithm:hex"),
    ("validname@", "digest is empty"),
    ("validname:", "tag is empty"),
    ("validname:tag@", "digest is empty"),
    ("Uppercase:tag", "repository name (library/Uppercase) must be lowercase"),
    ("test:5000/Uppercase/lowercase:tag", "(Uppercase/lowercase) must be lowercase"),
    ("domain/" + "a" * 256 + ":tag", "must not be more than 255 characters"),
    ("aa/asdf$$^/aa", "invalid component (asdf$$^)"),
    ("[2001:db8::1]", "invalid component"),
    ("[2001:db8::1]:5000", "invalid component"),
    ("[2001:db8::1]:tag", "invalid component"),
    ("[fe80::1%eth0]:5000/repo", "invalid IPv6 address"),
    ("[fe80::1%@invalidzone]:5000/repo", ""),
    # TestReferenceRegexp
    ("registry.com:8080/myapp@sha256:badbadbadbad", "hex digits"),
    ("registry.com:8080/myapp:invalid~tag", "tag (invalid~tag) must match"),
    ("bad_hostname.com:8080/myapp:tag", "domain (bad_hostname.com:8080)"),
    ("localhost:http/name@" + D_BE, "port that is not a number"),
    ("registry.com:8080/myapp@bad", "must be algorithm:hex"),
    ("registry.com:8080/myapp@2bad", "must be algorithm:hex"),
    # TestIdentifierRegexp: 64 hex digits are ambiguous with an image ID.
    (HEX64, "cannot specify 64-byte hexadecimal strings"),
    (HEX64.upper(), "must be lowercase"),
    # Tags: 129 characters, a leading '.' or '-'.
    ("foo:" + "t" * 129, "must match"),
    ("foo:.x", "must match"),
    ("foo:-x", "must match"),
    ("foo:a:b", "must match"),
    ("foo@" + D_F + "@" + D_F, "hex digits"),
    # Ports: imgpull refuses what can never be dialled (upstream takes any digits).
    ("192.168.1.1:75050/repo", "port outside 1-65535"),
    ("192.168.1.1:0/repo", "port outside 1-65535"),
    ("[fd00123123123]:5000/repo", "invalid IPv6 address"),
    # Whitespace and control characters are never part of a reference.
    (" ubuntu", "invalid component"),
    ("ubuntu ", "invalid component"),
    ("ubuntu:latest\n", "must match"),
    ("ubu\x00ntu", "invalid component"),
    ("ubüntu", "invalid component"),
]


@pytest.mark.parametrize(("text", "fragment"), INVALID)
def test_parse_invalid(text: str, fragment: str) -> None:
    with pytest.raises(InvalidReferenceError) as info:
        parse_reference(text)
    message = str(info.value)
    assert fragment in message
    assert message.startswith("invalid reference format")
    assert "\n" not in message and "\r" not in message


def test_lowercase_message_is_docker_s() -> None:
    with pytest.raises(InvalidReferenceError) as info:
        parse_reference("library/Ubuntu")
    assert str(info.value) == (
        "invalid reference format: repository name (library/Ubuntu) must be lowercase"
    )


def test_messages_name_the_input() -> None:
    with pytest.raises(InvalidReferenceError, match=r"in 'foo:bad~tag'"):
        parse_reference("foo:bad~tag")
    with pytest.raises(InvalidReferenceError, match=r"\(in 'Ubuntu'\)"):
        parse_reference("Ubuntu")


def test_long_input_is_shortened_in_message() -> None:
    with pytest.raises(InvalidReferenceError) as info:
        parse_reference("x" * 5000 + "!")
    assert len(str(info.value)) < 600


# normalize_test.go TestValidateReferenceName
VALID_NAMES = [
    "docker/docker",
    "library/debian",
    "debian",
    "localhost/library/debian",
    "localhost/debian",
    "LOCALDOMAIN/library/debian",
    "LOCALDOMAIN/debian",
    "docker.io/docker/docker",
    "docker.io/library/debian",
    "docker.io/debian",
    "index.docker.io/docker/docker",
    "index.docker.io/library/debian",
    "index.docker.io/debian",
    "127.0.0.1:5000/docker/docker",
    "127.0.0.1:5000/library/debian",
    "127.0.0.1:5000/debian",
    "192.168.0.1",
    "192.168.0.1:80",
    "192.168.0.1:8/debian",
    "192.168.0.2:25000/debian",
    "thisisthesongthatneverendsitgoesonandonandonthisisthesongthatnev",
    "[fc00::1]:5000/docker",
    "[fc00::1]:5000/docker/docker",
    "[fc00:1:2:3:4:5:6:7]:5000/library/debian",
    "docker.io/" + HEX64,
    "Docker/docker",
    "DOCKER/docker",
    # TestValidateRemoteName
    "docker-rules/docker",
    "docker---rules/docker",
    "doc/docker",
    "d/docker",
    "jess/t",
    "dock__er/docker",
]

INVALID_NAMES = [
    "https://github.com/docker/docker",
    "docker/Docker",
    "-docker",
    "-docker/docker",
    "-docker.io/docker/docker",
    "docker///docker",
    "docker.io/docker/Docker",
    "docker.io/docker///docker",
    "[fc00::1]",
    "[fc00::1]:5000",
    "fc00::1:5000/debian",
    "[fe80::1%eth0]:5000/debian",
    "[2001:db8:3:4::192.0.2.33]:5000/debian",
    HEX64,
    # TestValidateRemoteName
    "docker-/docker",
    "-docker-/docker",
    "____/____",
    "_docker/_docker",
    "dock..er/docker",
    "dock_.er/docker",
    "dock-.er/docker",
    "docker/",
    "this_is_not_a_valid_namespace_because_its_lenth_is_greater_than_255_"
    "this_is_not_a_valid_namespace_because_its_lenth_is_greater_than_255_"
    "this_is_not_a_valid_namespace_because_its_lenth_is_greater_than_255_"
    "this_is_not_a_valid_namespace_because_its_lenth_is_greater_than_255/docker",
]


@pytest.mark.parametrize("text", VALID_NAMES)
def test_valid_names(text: str) -> None:
    parse_reference(text)


@pytest.mark.parametrize("text", INVALID_NAMES)
def test_invalid_names(text: str) -> None:
    with pytest.raises(InvalidReferenceError):
        parse_reference(text)


# normalize_test.go TestParseRepositoryInfo:
# (path, familiar name, full name, ambiguous spelling or "", domain)
REPOSITORY_INFO = [
    ("fooo", "localhost/fooo", "localhost/fooo", "localhost/fooo", "localhost"),
    ("fooo/bar", "localhost/fooo/bar", "localhost/fooo/bar", "localhost/fooo/bar", "localhost"),
    ("fooo", "LOCALDOMAIN/fooo", "LOCALDOMAIN/fooo", "LOCALDOMAIN/fooo", "LOCALDOMAIN"),
    (
        "fooo/bar",
        "LOCALDOMAIN/fooo/bar",
        "LOCALDOMAIN/fooo/bar",
        "LOCALDOMAIN/fooo/bar",
        "LOCALDOMAIN",
    ),
    ("fooo/bar", "fooo/bar", "docker.io/fooo/bar", "index.docker.io/fooo/bar", "docker.io"),
    ("library/ubuntu", "ubuntu", "docker.io/library/ubuntu", "library/ubuntu", "docker.io"),
    ("nonlibrary/ubuntu", "nonlibrary/ubuntu", "docker.io/nonlibrary/ubuntu", "", "docker.io"),
    ("other/library", "other/library", "docker.io/other/library", "", "docker.io"),
    (
        "private/moonbase",
        "127.0.0.1:8000/private/moonbase",
        "127.0.0.1:8000/private/moonbase",
        "",
        "127.0.0.1:8000",
    ),
    (
        "privatebase",
        "127.0.0.1:8000/privatebase",
        "127.0.0.1:8000/privatebase",
        "",
        "127.0.0.1:8000",
    ),
    (
        "private/moonbase",
        "example.com/private/moonbase",
        "example.com/private/moonbase",
        "",
        "example.com",
    ),
    ("privatebase", "example.com/privatebase", "example.com/privatebase", "", "example.com"),
    (
        "private/moonbase",
        "example.com:8000/private/moonbase",
        "example.com:8000/private/moonbase",
        "",
        "example.com:8000",
    ),
    (
        "privatebasee",
        "example.com:8000/privatebasee",
        "example.com:8000/privatebasee",
        "",
        "example.com:8000",
    ),
    (
        "library/ubuntu-12.04-base",
        "ubuntu-12.04-base",
        "docker.io/library/ubuntu-12.04-base",
        "index.docker.io/library/ubuntu-12.04-base",
        "docker.io",
    ),
    ("library/foo", "foo", "docker.io/library/foo", "docker.io/foo", "docker.io"),
    ("library/foo/bar", "library/foo/bar", "docker.io/library/foo/bar", "", "docker.io"),
    ("store/foo/bar", "store/foo/bar", "docker.io/store/foo/bar", "", "docker.io"),
    ("bar", "Foo/bar", "Foo/bar", "", "Foo"),
    ("bar", "FOO/bar", "FOO/bar", "", "FOO"),
]

REPOSITORY_INFO_CASES = [
    pytest.param(text, path, familiar, full, domain, id=text)
    for path, familiar, full, ambiguous, domain in REPOSITORY_INFO
    for text in dict.fromkeys(x for x in (familiar, full, ambiguous) if x)
]


@pytest.mark.parametrize(("text", "path", "familiar", "full", "domain"), REPOSITORY_INFO_CASES)
def test_repository_info(text: str, path: str, familiar: str, full: str, domain: str) -> None:
    ref = parse(text)
    assert ref.familiar_name == familiar
    assert ref.name == full
    assert str(ref) == full
    assert ref.domain == domain
    assert ref.path == path
    assert ref.is_name_only


# normalize_test.go TestNormalizedSplitHostname: (input, domain, path)
SPLIT_HOSTNAME = [
    ("test.com/foo", "test.com", "foo"),
    ("test_com/foo", "docker.io", "test_com/foo"),
    ("docker/migrator", "docker.io", "docker/migrator"),
    ("test.com:8080/foo", "test.com:8080", "foo"),
    ("test-com:8080/foo", "test-com:8080", "foo"),
    ("foo", "docker.io", "library/foo"),
    ("xn--n3h.com/foo", "xn--n3h.com", "foo"),
    ("xn--n3h.com:18080/foo", "xn--n3h.com:18080", "foo"),
    ("docker.io/foo", "docker.io", "library/foo"),
    ("docker.io/library/foo", "docker.io", "library/foo"),
    ("docker.io/library/foo/bar", "docker.io", "library/foo/bar"),
    ("index.docker.io/foo", "docker.io", "library/foo"),
    ("index.docker.io/user/foo", "docker.io", "user/foo"),
    # regexp_test.go TestFullNameRegexp, normalised.
    ("short", "docker.io", "library/short"),
    ("simple/name", "docker.io", "simple/name"),
    ("library/ubuntu", "docker.io", "library/ubuntu"),
    ("docker/stevvooe/app", "docker.io", "docker/stevvooe/app"),
    (
        "aa/aa/aa/aa/aa/aa/aa/aa/aa/bb/bb/bb/bb/bb/bb",
        "docker.io",
        "aa/aa/aa/aa/aa/aa/aa/aa/aa/bb/bb/bb/bb/bb/bb",
    ),
    ("aa/aa/bb/bb/bb", "docker.io", "aa/aa/bb/bb/bb"),
    ("a/a/a/a", "docker.io", "a/a/a/a"),
    ("a", "docker.io", "library/a"),
    ("a/aa", "docker.io", "a/aa"),
    ("a/aa/a", "docker.io", "a/aa/a"),
    ("foo.com", "docker.io", "library/foo.com"),
    ("foo.com:8080/bar", "foo.com:8080", "bar"),
    ("foo.com/bar", "foo.com", "bar"),
    ("foo.com/bar/baz", "foo.com", "bar/baz"),
    ("localhost:8080/bar", "localhost:8080", "bar"),
    ("sub-dom1.foo.com/bar/baz/quux", "sub-dom1.foo.com", "bar/baz/quux"),
    ("blog.foo.com/bar/baz", "blog.foo.com", "bar/baz"),
    ("aa-a/a", "docker.io", "aa-a/a"),
    ("foo_bar", "docker.io", "library/foo_bar"),
    ("foo_bar.com", "docker.io", "library/foo_bar.com"),
    ("foo.com/foo_bar", "foo.com", "foo_bar"),
    ("b.gcr.io/test.example.com/my-app", "b.gcr.io", "test.example.com/my-app"),
    ("xn--n3h.com/myimage", "xn--n3h.com", "myimage"),
    ("xn--7o8h.com/myimage", "xn--7o8h.com", "myimage"),
    ("example.com/xn--7o8h.com/myimage", "example.com", "xn--7o8h.com/myimage"),
    (
        "example.com/some_separator__underscore/myimage",
        "example.com",
        "some_separator__underscore/myimage",
    ),
    ("do__cker/docker", "docker.io", "do__cker/docker"),
    (
        "registry.io/foo/project--id.module--name.ver---sion--name",
        "registry.io",
        "foo/project--id.module--name.ver---sion--name",
    ),
    ("Asdf.com/foo/bar", "Asdf.com", "foo/bar"),
]


@pytest.mark.parametrize(("text", "domain", "path"), SPLIT_HOSTNAME)
def test_split_hostname(text: str, domain: str, path: str) -> None:
    ref = parse(text)
    assert (ref.domain, ref.path) == (domain, path)


# regexp_test.go TestFullNameRegexp, the names that do not match.
INVALID_FULL_NAMES = [
    "a/a/a/a/",
    "a//a/a",
    "foo.com/",
    "foo.com:http/bar",
    "a^a",
    "aa/asdf$$^/aa",
    "asdf$$^/aa",
    # 257 characters once normalised: the path is all of it.
    "a/" * 128 + "a",
    "a-/a/a/a",
    "foo.com/a-/a/a",
    "-foo/bar",
    "foo/bar-",
    "foo-/bar",
    "foo/-bar",
    "_foo/bar",
    "foo_bar.com:8080/app",
    "____/____",
    "_docker/_docker",
    "docker_/docker_",
    "example.com/__underscore/myimage",
    "example.com/..dots/myimage",
    "example.com/.dots/myimage",
    "example.com/nodouble..dots/myimage",
    "docker./docker",
    ".docker/docker",
    "docker-/docker",
    "-docker/docker",
    "do..cker/docker",
    "do__cker:8080/docker",
    "Foo/FarB",
]


@pytest.mark.parametrize("text", INVALID_FULL_NAMES)
def test_invalid_full_names(text: str) -> None:
    with pytest.raises(InvalidReferenceError):
        parse_reference(text)


# regexp_test.go TestDomainRegexp, tried as "<domain>/foo". The cases that do
# not contain '.' or ':' and are not localhost are not domains for docker and
# are left out ("a").
DOMAINS = [
    ("test.com", True),
    ("test.com:10304", True),
    ("test.com:http", False),
    ("localhost", True),
    ("localhost:8080", True),
    ("a.b", True),
    ("ab.cd.com", True),
    ("a-b.com", True),
    ("-ab.com", False),
    ("ab-.com", False),
    ("ab.c-om", True),
    ("ab.-com", False),
    ("ab.com-", False),
    ("0101.com", True),
    ("001a.com", True),
    ("b.gbc.io:443", True),
    ("b.gbc.io", True),
    ("xn--n3h.com", True),
    ("Asdf.com", True),
    # Upstream's pattern takes these and leaves the port to validation;
    # imgpull refuses ports above 65535 at once.
    ("192.168.1.1:75050", False),
    ("192.168.1.1:750050", False),
    ("[fd00:1:2::3]:75050", False),
    ("[fd00:1:2::3]:7505", True),
    ("[fd00:1:2::3]75050", False),
    ("[fd00:1:2::3]::75050", False),
    ("[fd00:1:2::3%eth0]:75050", False),
    ("[fd00123123123]:7505", False),
    ("[2001:0db8:85a3:0000:0000:8a2e:0370:7334]:7505", True),
    ("[2001:0db8:85a3:0000:0000:8a2e:0370:7334]:750505", False),
    ("fd00:1:2::3:75050", False),
    ("192.168.1.1:65535", True),
    ("192.168.1.1:00080", True),
]


@pytest.mark.parametrize(("domain", "valid"), DOMAINS)
def test_domains(domain: str, valid: bool) -> None:
    if valid:
        ref = parse(domain + "/foo")
        assert (ref.domain, ref.path) == (domain, "foo")
    else:
        with pytest.raises(InvalidReferenceError):
            parse_reference(domain + "/foo")


# normalize_test.go TestParseDockerRef (TagNameOnly). Unlike ParseDockerRef,
# name:tag@digest keeps the tag (for display); the digest is what is pulled.
DOCKER_REF = [
    ("busybox", "docker.io/library/busybox:latest"),
    ("busybox:latest", "docker.io/library/busybox:latest"),
    ("busybox@" + D_E6, "docker.io/library/busybox@" + D_E6),
    ("library/busybox", "docker.io/library/busybox:latest"),
    ("docker.io/busybox", "docker.io/library/busybox:latest"),
    ("docker.io/library/busybox", "docker.io/library/busybox:latest"),
    ("docker.io/busybox:latest", "docker.io/library/busybox:latest"),
    ("library/busybox:latest", "docker.io/library/busybox:latest"),
    ("docker.io/library/busybox:latest", "docker.io/library/busybox:latest"),
    ("gcr.io/library/busybox", "gcr.io/library/busybox:latest"),
    (
        "gcr.io/library/busybox:latest@" + D_E6,
        "gcr.io/library/busybox:latest@" + D_E6,
    ),
]


@pytest.mark.parametrize(("text", "expected"), DOCKER_REF)
def test_default_tag(text: str, expected: str) -> None:
    assert str(parse_reference(text)) == expected


def test_default_tag_options() -> None:
    assert parse_reference("ubuntu", default_tag="22.04").tag == "22.04"
    assert parse_reference("ubuntu", default_tag=None).is_name_only
    assert parse_reference("ubuntu:1", default_tag=None).tag == "1"
    with pytest.raises(InvalidReferenceError, match="default tag"):
        parse_reference("ubuntu", default_tag="-bad")


def test_tag_and_digest() -> None:
    # normalize_test.go TestParseReferenceWithTagAndDigest
    short = "busybox:latest@" + D_86
    ref = parse_reference(short)
    assert str(ref) == "docker.io/library/" + short
    assert ref.tag == "latest"
    assert ref.digest == D_86
    assert ref.familiar() == short
    assert ref.manifest_reference == D_86
    assert parse_reference("busybox").manifest_reference == "latest"
    assert parse("busybox").manifest_reference is None


# reference_test.go TestWithTag / TestWithDigest (with full-length digests,
# which imgpull requires): (name, digest, tag, combined)
WITH_TAG = [
    ("test.com/foo", None, "tag", "test.com/foo:tag"),
    ("foo", None, "tag2", "docker.io/library/foo:tag2"),
    ("test.com:8000/foo", None, "tag4", "test.com:8000/foo:tag4"),
    ("test.com:8000/foo", None, "TAG5", "test.com:8000/foo:TAG5"),
    ("test.com:8000/foo", D_F, "TAG5", "test.com:8000/foo:TAG5@" + D_F),
]


@pytest.mark.parametrize(("name", "digest", "tag", "combined"), WITH_TAG)
def test_with_tag(name: str, digest: str | None, tag: str, combined: str) -> None:
    ref = parse(name)
    if digest is not None:
        ref = ref.with_digest(digest)
    assert str(ref.with_tag(tag)) == combined


WITH_DIGEST = [
    ("test.com/foo", D_F, None, "test.com/foo@" + D_F),
    ("foo", D_F, None, "docker.io/library/foo@" + D_F),
    ("test.com:8000/foo", D_F, None, "test.com:8000/foo@" + D_F),
    ("test.com:8000/foo", D_F, "latest", "test.com:8000/foo:latest@" + D_F),
]


@pytest.mark.parametrize(("name", "digest", "tag", "combined"), WITH_DIGEST)
def test_with_digest(name: str, digest: str, tag: str | None, combined: str) -> None:
    ref = parse(name)
    if tag is not None:
        ref = ref.with_tag(tag)
    assert str(ref.with_digest(digest)) == combined


def test_invalid_components() -> None:
    # normalize_test.go TestInvalidReferenceComponents
    with pytest.raises(InvalidReferenceError):
        parse_reference("-foo")
    ref = parse_reference("busybox")
    with pytest.raises(InvalidReferenceError, match="tag"):
        ref.with_tag("-foo")
    with pytest.raises(InvalidReferenceError, match="digest"):
        ref.with_digest("foo")
    with pytest.raises(InvalidReferenceError):
        Reference("docker.io", "Library/foo")
    with pytest.raises(InvalidReferenceError):
        Reference("", "foo")


def test_reference_api() -> None:
    ref = parse_reference("ubuntu")
    assert ref == Reference("docker.io", "library/ubuntu", "latest", None)
    assert ref.name == "docker.io/library/ubuntu"
    assert ref.repository == "library/ubuntu"
    assert ref.familiar_name == "ubuntu"
    assert ref.familiar() == "ubuntu:latest"
    assert str(ref) == "docker.io/library/ubuntu:latest"
    assert not ref.is_name_only
    assert ref.name_only() == Reference("docker.io", "library/ubuntu")
    assert hash(ref) == hash(parse_reference("docker.io/library/ubuntu:latest"))
    with pytest.raises(AttributeError):
        ref.tag = "x"  # type: ignore[misc]
    assert parse_reference("user/app").familiar() == "user/app:latest"
    assert parse_reference("localhost:5000/x").familiar_name == "localhost:5000/x"
    assert parse_reference("docker.io/library/a/b").familiar_name == "library/a/b"


def test_not_a_string() -> None:
    with pytest.raises(InvalidReferenceError, match="expected a string"):
        parse_reference(b"ubuntu")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("domain", "host"),
    [
        ("docker.io", "registry-1.docker.io"),
        ("index.docker.io", "registry-1.docker.io"),
        ("localhost:5000", "localhost:5000"),
        ("ghcr.io", "ghcr.io"),
        ("[::1]:5000", "[::1]:5000"),
    ],
)
def test_registry_host(domain: str, host: str) -> None:
    assert registry_host(domain) == host


# --- robustness -------------------------------------------------------------------

REFERENCE_ALPHABET = "abcz019AZ._-/:@[]%~ \n"


def _check_outcome(text: str) -> None:
    try:
        ref = parse_reference(text)
    except InvalidReferenceError as e:
        message = str(e)
        assert message.startswith("invalid reference format")
        assert "\n" not in message and "\r" not in message
    else:
        assert parse_reference(str(ref)) == ref


@settings(deadline=500, max_examples=500)
@given(st.text())
def test_random_text_only_raises_invalid_reference(text: str) -> None:
    _check_outcome(text)


@settings(deadline=500, max_examples=1000)
@given(st.text(alphabet=REFERENCE_ALPHABET, max_size=300))
def test_reference_like_text_only_raises_invalid_reference(text: str) -> None:
    _check_outcome(text)


_LOWER = "abcdefghijklmnopqrstuvwxyz0123456789"
_alnum = st.text(alphabet=_LOWER, min_size=1, max_size=8)
_component = st.builds(
    lambda first, rest: first + "".join(sep + word for sep, word in rest),
    _alnum,
    st.lists(st.tuples(st.sampled_from([".", "_", "__", "-", "--"]), _alnum), max_size=3),
)
_domain = st.one_of(
    st.just("localhost"),
    st.builds(lambda a, b: f"{a}.{b}", _alnum, st.sampled_from(["com", "io", "example"])),
    st.builds(lambda a, port: f"{a}:{port}", _alnum, st.integers(1, 65535)),
    st.just("[::1]"),
)
_tag = st.text(alphabet="abcXYZ019_.-", min_size=1, max_size=20).filter(lambda t: t[0] not in ".-")


@st.composite
def _references(draw: st.DrawFn) -> tuple[str, str | None, str, str | None, str | None]:
    domain = draw(st.one_of(st.none(), _domain))
    path = "/".join(draw(st.lists(_component, min_size=1, max_size=4)))
    tag = draw(st.one_of(st.none(), _tag))
    digest = draw(
        st.one_of(st.none(), st.text(alphabet="0123456789abcdef", min_size=64, max_size=64))
    )
    text = (f"{domain}/" if domain else "") + path
    text += f":{tag}" if tag else ""
    text += f"@sha256:{digest}" if digest else ""
    return text, domain, path, tag, None if digest is None else f"sha256:{digest}"


@settings(deadline=500, max_examples=300)
@given(_references())
def test_generated_references_parse(
    case: tuple[str, str | None, str, str | None, str | None],
) -> None:
    text, domain, path, tag, digest = case
    # A dotted first component would be a domain; 64 hex digits are refused.
    assume(domain is not None or "." not in path.split("/")[0])
    assume(not (len(path) == 64 and all(c in "0123456789abcdef" for c in path)))
    ref = parse(text)
    if domain is None:
        assert ref.domain == "docker.io"
        assert ref.path in (path, "library/" + path)
    else:
        assert (ref.domain, ref.path) == (domain, path)
    assert (ref.tag, ref.digest) == (tag, digest)
    assert parse(str(ref)) == ref
    assert parse(ref.familiar()) == ref


@pytest.mark.parametrize(
    "text",
    [
        "a" + "-" * 50_000 + "!",
        "a" + "-a" * 25_000 + "!",
        "a" + "_a" * 25_000 + "-",
        "a" + "ab" * 25_000 + "/-",
        "x." * 25_000 + "/foo",
        "x-" * 25_000 + ".com/foo",
        "[" + ":" * 50_000 + "]/foo",
        "foo:" + "a" * 50_000,
        "foo@sha256:" + "a" * 50_000,
        "foo@" + "a." * 25_000,
        "foo/" * 20_000,
    ],
    ids=lambda t: t[:12],
)
def test_no_catastrophic_backtracking(text: str) -> None:
    start = time.perf_counter()
    with pytest.raises(InvalidReferenceError):
        parse_reference(text)
    assert time.perf_counter() - start < 1.0
