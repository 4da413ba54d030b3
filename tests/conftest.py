"""Session fixtures: real registries on loopback and images pushed to them.

imgpull is NOT imported here: the package may be mid-change while these
fixtures are in use; tests import it themselves.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import pytest
from support.images import (
    Dir,
    File,
    ImageInfo,
    LayoutCache,
    PushFormat,
    Symlink,
    files_layer,
    push,
    random_layer,
)
from support.registry import MissingToolError, RegistryServer, require_tool

# A shell that starts a command in the background without job control has it
# ignore SIGINT, and every imgpull the tests start would inherit that (Python
# keeps an ignored SIGINT ignored): the Ctrl-C tests would then see a pull
# finish instead of stop. Our own handler is reset to the default at exec.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

AUTH_USER = "imgpull-tester"
AUTH_PASSWORD = "correct horse battery staple"
REQUIRED_TOOLS = ("docker-registry", "skopeo", "openssl")


def require_tools() -> None:
    """pytest.fail (never skip) when a tool the registry tests need is missing."""
    try:
        for tool in REQUIRED_TOOLS:
            require_tool(tool)
    except MissingToolError as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture
def fault_row(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Any]:
    """This test's row of the fault matrix (support/faultmatrix.py), filed
    when the test ends: the faults it injected, its pulls, those that ended right."""
    from support.faultmatrix import Row, append, matrix_path

    row = Row(request.node.nodeid)
    yield row
    append(matrix_path(request.config, tmp_path_factory.getbasetemp()), row)


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    """The fault matrix of the fault-injection tests, when any ran."""
    from support.faultmatrix import summary_lines

    for line in summary_lines(config):
        terminalreporter.write_line(line)


def pytest_report_header(config: pytest.Config) -> list[str]:
    lines = []
    for tool, flag in (("docker-registry", "--version"), ("skopeo", "--version")):
        path = shutil.which(tool)
        if path is None:
            lines.append(f"{tool}: MISSING (registry tests will fail)")
            continue
        out = subprocess.run([path, flag], capture_output=True, text=True, timeout=30).stdout
        lines.append(f"{tool}: {out.strip()}")
    return lines


@pytest.fixture(scope="session", autouse=True)
def _private_docker_config(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """imgpull reads credentials from Docker's config file by default: the
    tests (and the CLI processes they start) get an empty one, never the machine's.
    Nor the machine's DOCKER_DEFAULT_PLATFORM (the CLI's --platform default)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DOCKER_CONFIG", str(tmp_path_factory.mktemp("docker-config")))
        mp.delenv("DOCKER_DEFAULT_PLATFORM", raising=False)
        yield


def _start(factory: pytest.TempPathFactory, name: str, **kwargs: Any) -> RegistryServer:
    require_tools()
    # Under pytest's basetemp, so the config and logs of a failed run stay for a look.
    return RegistryServer(workdir=factory.mktemp(name), **kwargs)


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    """A plain-HTTP registry shared by the whole session. Don't corrupt its blobs:
    use ``fresh_registry`` for that."""
    with _start(tmp_path_factory, "registry") as reg:
        yield reg


@pytest.fixture(scope="session")
def tls_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    """An HTTPS registry; its certificate is signed by the CA at ``tls_registry.ca_path``."""
    with _start(tmp_path_factory, "tls-registry", tls=True) as reg:
        yield reg


@pytest.fixture(scope="session")
def auth_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    """A plain-HTTP registry with htpasswd basic auth (``.username``/``.password``)."""
    with _start(tmp_path_factory, "auth-registry", auth=(AUTH_USER, AUTH_PASSWORD)) as reg:
        yield reg


@pytest.fixture(scope="session")
def tls_auth_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    """HTTPS and htpasswd basic auth together, as real private registries run."""
    with _start(
        tmp_path_factory, "tls-auth-registry", tls=True, auth=(AUTH_USER, AUTH_PASSWORD)
    ) as reg:
        yield reg


@pytest.fixture
def make_registry(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[..., RegistryServer]]:
    """A factory for registries private to one test (``make_registry(tls=True)``),
    stopped when the test ends; for tests that corrupt blobs or need a clean slate."""
    with ExitStack() as stack:

        def make(**kwargs: Any) -> RegistryServer:
            return stack.enter_context(_start(tmp_path_factory, "registry", **kwargs))

        yield make


@pytest.fixture
def fresh_registry(make_registry: Callable[..., RegistryServer]) -> RegistryServer:
    """A plain-HTTP registry of this test's own (~0.1 s to start)."""
    return make_registry()


@pytest.fixture(scope="session")
def layout_cache(tmp_path_factory: pytest.TempPathFactory) -> LayoutCache:
    """Builds each distinct image once per session: ``layout_cache.get(layers, ref=...)``."""
    return LayoutCache(tmp_path_factory.mktemp("layouts"))


# The small test image: three layers, ~3.5 MB, one of them real files.
SMALL_IMAGE_LAYERS = (
    random_layer(2 * 1024 * 1024, seed=1),
    files_layer(
        {
            "etc": Dir(),
            "etc/hostname": b"imgpull-test\n",
            "etc/os-release": b'ID=imgpull\nPRETTY_NAME="imgpull test image"\n',
            "usr": Dir(),
            "usr/bin": Dir(),
            "usr/bin/hello": File(b"#!/bin/sh\necho hello\n", mode=0o755),
            "usr/bin/hi": Symlink("hello"),
            "srv": Dir(mode=0o700),
            "srv/secret": File(b"s3cret\n", mode=0o600, uid=1000, gid=1000),
        }
    ),
    random_layer(1536 * 1024, seed=2, files=3, prefix="opt/blobs"),
)


@dataclass(frozen=True)
class PushedImage:
    """An image pushed to ``registry`` as Docker v2s2 and as OCI."""

    registry: RegistryServer
    image: ImageInfo  # the local OCI layout it was pushed from
    repo: str  # "test/small"
    tags: dict[str, str]  # format -> tag: {"v2s2": "v2s2", "oci": "oci"}
    digests: dict[str, str]  # format -> manifest digest as pushed

    def ref(self, fmt: PushFormat = "v2s2") -> str:
        """``127.0.0.1:PORT/test/small:v2s2``."""
        return self.registry.ref(f"{self.repo}:{self.tags[fmt]}")

    def digest_ref(self, fmt: PushFormat = "v2s2") -> str:
        """``127.0.0.1:PORT/test/small@sha256:...``."""
        return self.registry.ref(f"{self.repo}@{self.digests[fmt]}")

    @property
    def refs(self) -> dict[str, str]:
        return {fmt: self.ref(fmt) for fmt in self.tags}  # type: ignore[arg-type]

    @property
    def layer_digests(self) -> list[str]:
        return self.image.layer_digests

    @property
    def config_digest(self) -> str:
        return self.image.config_digest


def push_both(registry: RegistryServer, image: ImageInfo, repo: str) -> PushedImage:
    """Push ``image`` to ``registry`` as ``<repo>:v2s2`` and ``<repo>:oci``."""
    tags: dict[str, str] = {"v2s2": "v2s2", "oci": "oci"}
    digests = {
        fmt: push(image, registry, f"{repo}:{tag}", fmt)  # type: ignore[arg-type]
        for fmt, tag in tags.items()
    }
    return PushedImage(registry, image, repo, tags, digests)


@pytest.fixture(scope="session")
def small_image(layout_cache: LayoutCache) -> ImageInfo:
    """The small test image as an OCI layout (not pushed)."""
    return layout_cache.get(SMALL_IMAGE_LAYERS, ref="small")


@pytest.fixture(scope="session")
def pushed_image(registry: RegistryServer, small_image: ImageInfo) -> PushedImage:
    """The small image on the session ``registry`` as ``test/small:v2s2`` and ``test/small:oci``."""
    return push_both(registry, small_image, "test/small")
