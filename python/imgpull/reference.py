"""Docker image references: parsing, normalisation and display.

Implements the grammar of distribution/reference (what `docker pull` accepts):

    reference := [domain "/"] path [":" tag] ["@" digest]

Familiar names are normalised the way ParseNormalizedNamed does (`ubuntu` is
`docker.io/library/ubuntu`), and a name-only reference gets the default tag
(TagNameOnly). The parser is hand-written around a few linear regexes so that
no input can cause catastrophic backtracking; every invalid input raises
InvalidReferenceError with a one-line message.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, replace
from typing import NoReturn

from imgpull.errors import InvalidReferenceError
from imgpull.safetext import shown

__all__ = [
    "DEFAULT_DOMAIN",
    "DEFAULT_TAG",
    "LEGACY_DEFAULT_DOMAIN",
    "NAME_TOTAL_LENGTH_MAX",
    "OFFICIAL_REPO_PREFIX",
    "Reference",
    "parse_reference",
    "registry_host",
]

DEFAULT_DOMAIN = "docker.io"
LEGACY_DEFAULT_DOMAIN = "index.docker.io"
DEFAULT_REGISTRY_HOST = "registry-1.docker.io"
OFFICIAL_REPO_PREFIX = "library/"
DEFAULT_TAG = "latest"
# Upstream (distribution/reference v0.6) limits the path only, not domain + path.
NAME_TOTAL_LENGTH_MAX = 255

# Each pattern below is linear for Python's backtracking engine: the pieces a
# repetition can consume are disjoint from the separators around them.
_PATH_COMPONENT_RE = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*", re.ASCII)
_TAG_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}", re.ASCII)
_TAG_PATTERN = r"[\w][\w.-]{0,127}"
_ALGORITHM_RE = re.compile(r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*", re.ASCII)
_DOMAIN_LABEL_RE = re.compile(r"[A-Za-z0-9-]+", re.ASCII)
_PORT_RE = re.compile(r"[0-9]+", re.ASCII)
_IPV6_RE = re.compile(r"\[[A-Fa-f0-9:]+\]", re.ASCII)
_HEX64_RE = re.compile(r"[a-f0-9]{64}", re.ASCII)
_LOWER_HEX_RE = re.compile(r"[a-f0-9]+", re.ASCII)
_ANY_HEX_RE = re.compile(r"[A-Fa-f0-9]+", re.ASCII)

# Digest algorithms imgpull can verify, with the length of their hex encoding.
_DIGEST_HEX_LENGTHS = {"sha256": 64, "sha512": 128}

_SHOW_MAX = 120


def _esc(text: str) -> str:
    """Text made safe for a one-line message: escaped, and cut when long."""
    return shown(text, _SHOW_MAX)


def _fail(ref: str, problem: str) -> NoReturn:
    message = f"invalid reference format: {problem}"
    # Name the input unless the problem already shows it whole.
    if f"({_esc(ref)})" not in message:
        message += f" (in '{_esc(ref)}')"
    raise InvalidReferenceError(message)


def _check_domain(domain: str) -> str | None:
    """The problem with a registry domain ("host[:port]"), or None if valid."""
    port: str | None
    if domain.startswith("["):
        host, _, after = domain.partition("]")
        host += "]"
        if after and not after.startswith(":"):
            return f"domain ({_esc(domain)}) has junk after the IPv6 address"
        port = after[1:] if after else None
        if not _IPV6_RE.fullmatch(host):
            return f"domain ({_esc(domain)}) has an invalid IPv6 address"
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            return f"domain ({_esc(domain)}) has an invalid IPv6 address"
    else:
        host, colon, port_text = domain.partition(":")
        port = port_text if colon else None
        labels = host.split(".")
        for label in labels:
            if not _DOMAIN_LABEL_RE.fullmatch(label) or label[0] == "-" or label[-1] == "-":
                return (
                    f"domain ({_esc(domain)}) must be host names of letters, digits and "
                    "inner hyphens joined by dots, with an optional :port"
                )
    if port is not None:
        if not _PORT_RE.fullmatch(port):
            return f"domain ({_esc(domain)}) has a port that is not a number"
        # Upstream's grammar takes any digits; a port outside 1-65535 can never
        # be dialled, so say so now rather than as a confusing network error.
        if not 0 < int(port) <= 65535:
            return f"domain ({_esc(domain)}) has a port outside 1-65535"
    return None


def _check_path(path: str) -> str | None:
    """The problem with a repository path, or None if valid."""
    if path == "":
        return "repository name must have at least one component"
    if path.lower() != path:
        return f"repository name ({_esc(path)}) must be lowercase"
    if len(path) > NAME_TOTAL_LENGTH_MAX:
        return (
            f"repository name ({_esc(path)}) must not be more than "
            f"{NAME_TOTAL_LENGTH_MAX} characters (it has {len(path)})"
        )
    for component in path.split("/"):
        if component == "":
            return f"repository name ({_esc(path)}) has an empty path component"
        if not _PATH_COMPONENT_RE.fullmatch(component):
            return (
                f"repository name ({_esc(path)}) has an invalid component ({_esc(component)}): "
                "components are lower-case letters and digits, separated by '.', '_', '__' "
                "or hyphens, and start and end with a letter or digit"
            )
    return None


def _check_tag(tag: str) -> str | None:
    if tag == "":
        return "tag is empty"
    if not _TAG_RE.fullmatch(tag):
        return f"tag ({_esc(tag)}) must match {_TAG_PATTERN}"
    return None


def _check_digest(digest: str) -> str | None:
    if digest == "":
        return "digest is empty"
    algorithm, colon, hexpart = digest.partition(":")
    if not colon or not _ALGORITHM_RE.fullmatch(algorithm):
        return f"digest ({_esc(digest)}) must be algorithm:hex, e.g. sha256:<64 hex digits>"
    want = _DIGEST_HEX_LENGTHS.get(algorithm)
    if want is None:
        return (
            f"digest ({_esc(digest)}) uses an unsupported digest algorithm ({_esc(algorithm)}); "
            "use sha256 or sha512"
        )
    if not _LOWER_HEX_RE.fullmatch(hexpart):
        if _ANY_HEX_RE.fullmatch(hexpart):
            return f"digest ({_esc(digest)}) must be lower-case hex"
        return f"digest ({_esc(digest)}) must be hex digits after '{algorithm}:'"
    if len(hexpart) != want:
        return (
            f"digest ({_esc(digest)}) has the wrong length: {algorithm} needs {want} hex "
            f"digits, got {len(hexpart)}"
        )
    return None


def _check_all(domain: str, path: str, tag: str | None, digest: str | None) -> str | None:
    if domain == "":
        return "domain is empty"
    return (
        _check_domain(domain)
        or _check_path(path)
        or (None if tag is None else _check_tag(tag))
        or (None if digest is None else _check_digest(digest))
    )


@dataclass(frozen=True)
class Reference:
    """A parsed, normalised image reference.

    `domain` is the registry as written ("docker.io", "localhost:5000");
    `path` is the repository inside it ("library/ubuntu"). With both `tag`
    and `digest`, the digest is what gets pulled and the tag is for display.
    """

    domain: str
    path: str
    tag: str | None = None
    digest: str | None = None

    def __post_init__(self) -> None:
        # Checked here too so that with_tag()/with_digest()/direct
        # construction can never produce a reference parse_reference refuses.
        problem = _check_all(self.domain, self.path, self.tag, self.digest)
        if problem is not None:
            _fail(self._join(), problem)

    def _join(self) -> str:
        text = f"{self.domain}/{self.path}"
        if self.tag is not None:
            text += f":{self.tag}"
        if self.digest is not None:
            text += f"@{self.digest}"
        return text

    @property
    def name(self) -> str:
        """Full name, domain/path: "docker.io/library/ubuntu"."""
        return f"{self.domain}/{self.path}"

    @property
    def repository(self) -> str:
        """The path; what the registry API calls the name (/v2/<name>/...)."""
        return self.path

    @property
    def familiar_name(self) -> str:
        """Short name as docker shows it: "ubuntu", "user/app", "localhost:5000/x"."""
        return familiar_name(self.domain, self.path)

    @property
    def is_name_only(self) -> bool:
        return self.tag is None and self.digest is None

    @property
    def key(self) -> str:
        """The local store's key for this reference: "name@digest" when it has
        a digest (the tag is then only for display), else "name:tag"."""
        if self.digest is not None:
            return f"{self.name}@{self.digest}"
        return f"{self.name}:{self.tag}"

    @property
    def manifest_reference(self) -> str | None:
        """What to ask /v2/<name>/manifests/ for: the digest if any, else the tag."""
        return self.digest if self.digest is not None else self.tag

    def familiar(self) -> str:
        """Short form with tag and digest: "ubuntu:latest", "user/app@sha256:..."."""
        text = self.familiar_name
        if self.tag is not None:
            text += f":{self.tag}"
        if self.digest is not None:
            text += f"@{self.digest}"
        return text

    def with_tag(self, tag: str) -> Reference:
        """This reference with `tag` (any digest is kept)."""
        return replace(self, tag=tag)

    def with_digest(self, digest: str) -> Reference:
        """This reference with `digest` (any tag is kept, for display)."""
        return replace(self, digest=digest)

    def name_only(self) -> Reference:
        """This reference without tag or digest."""
        return replace(self, tag=None, digest=None)

    def __str__(self) -> str:
        return self._join()


def familiar_name(domain: str, path: str) -> str:
    """Repository `path` of registry `domain` as docker shows it: "ubuntu"
    for docker.io's library/ubuntu, else "user/app" or "localhost:5000/x"."""
    if domain != DEFAULT_DOMAIN:
        return f"{domain}/{path}"
    if path.startswith(OFFICIAL_REPO_PREFIX):
        rest = path[len(OFFICIAL_REPO_PREFIX) :]
        # library/a/b stays as is: dropping the prefix would change its meaning.
        if "/" not in rest:
            return rest
    return path


def _split_docker_domain(ref: str) -> tuple[str, str]:
    """(domain, remainder) of a familiar reference, as docker decides it."""
    first, slash, rest = ref.partition("/")
    if not slash:
        return DEFAULT_DOMAIN, OFFICIAL_REPO_PREFIX + ref
    if first == LEGACY_DEFAULT_DOMAIN:
        domain, remainder = DEFAULT_DOMAIN, rest
    elif first == "localhost" or "." in first or ":" in first:
        domain, remainder = first, rest
    elif first.lower() != first:
        # As upstream: an upper-case first component cannot be a path, so it
        # is taken as a host name ("LOCALDOMAIN/foo").
        domain, remainder = first, rest
    else:
        domain, remainder = DEFAULT_DOMAIN, ref
    if domain == DEFAULT_DOMAIN and "/" not in remainder:
        remainder = OFFICIAL_REPO_PREFIX + remainder
    return domain, remainder


def parse_reference(ref: str, *, default_tag: str | None = DEFAULT_TAG) -> Reference:
    """Parse and normalise a reference as `docker pull` does.

    `default_tag` is added when there is neither tag nor digest; pass None to
    keep a name-only reference (e.g. for pulling all tags).
    """
    if not isinstance(ref, str):
        raise InvalidReferenceError(
            f"invalid reference format: expected a string, got {type(ref).__name__}"
        )
    if ref == "":
        raise InvalidReferenceError(
            "invalid reference format: repository name must have at least one component "
            "(the reference is empty)"
        )
    if _HEX64_RE.fullmatch(ref):
        # Docker refuses these: they could be an image ID as well as a name.
        _fail(ref, f"invalid repository name ({ref}), cannot specify 64-byte hexadecimal strings")

    domain, remainder = _split_docker_domain(ref)
    if domain == "":
        _fail(ref, "domain is empty")

    before_digest, at, digest = remainder.partition("@")
    path, colon, tag = before_digest.partition(":")

    # Upper case is by far the most common mistake, so it is reported before
    # any other problem of the path (as upstream does).
    if path.lower() != path:
        _fail(ref, f"repository name ({_esc(path)}) must be lowercase")

    problem = _check_all(
        domain,
        path,
        tag if colon else None,
        digest if at else None,
    )
    if problem is not None:
        _fail(ref, problem)

    result = Reference(domain, path, tag if colon else None, digest if at else None)
    if result.is_name_only and default_tag is not None:
        if _check_tag(default_tag) is not None:
            raise InvalidReferenceError(
                f"invalid reference format: default tag ({_esc(default_tag)}) "
                f"must match {_TAG_PATTERN}"
            )
        result = result.with_tag(default_tag)
    return result


def registry_host(domain: str) -> str:
    """The host serving a reference's domain: Docker Hub is registry-1.docker.io."""
    if domain in (DEFAULT_DOMAIN, LEGACY_DEFAULT_DOMAIN):
        return DEFAULT_REGISTRY_HOST
    return domain
