"""Fixtures of the end-to-end tests: real registries on loopback (session
ones shared, ``make_registry``/``fresh_registry`` private to a test), the
session's image layouts and the small image pushed to ``registry``, and the
fault matrix row of a fault-injection test.

imgpull is NOT imported here: the package may be mid-change while these
fixtures are in use; tests import it themselves.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from typing import Any

import pytest
from support.images import ImageInfo, LayoutCache
from support.pushed import SMALL_IMAGE_LAYERS, PushedImage, push_both
from support.registry import RegistryServer, require_tools

AUTH_USER = "imgpull-tester"
AUTH_PASSWORD = "correct horse battery staple"


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


@pytest.fixture(scope="session")
def small_image(layout_cache: LayoutCache) -> ImageInfo:
    """The small test image (support.pushed.SMALL_IMAGE_LAYERS) as an OCI layout (not pushed)."""
    return layout_cache.get(SMALL_IMAGE_LAYERS, ref="small")


@pytest.fixture(scope="session")
def pushed_image(registry: RegistryServer, small_image: ImageInfo) -> PushedImage:
    """The small image on the session ``registry`` as ``test/small:v2s2`` and ``test/small:oci``."""
    return push_both(registry, small_image, "test/small")
