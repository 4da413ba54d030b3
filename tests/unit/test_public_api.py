"""The package's public surface: `imgpull.__all__` is what `imgpull` exports,
at run time and for type checkers, every error a user can meet is there,
and `import imgpull` stays cheap (issue 10)."""

from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys
import textwrap
from pathlib import Path
from types import ModuleType

import pytest

import imgpull

# Exception classes of the package deliberately not exported, and why.
NOT_EXPORTED = {
    # Raised only by the native schema1 helpers, and always turned into a
    # ManifestError (manifest.py, schema1.py) before it can reach a caller.
    "imgpull._core.Schema1Error",
}


def _package_modules() -> list[ModuleType]:
    modules = [imgpull]
    for info in pkgutil.walk_packages(imgpull.__path__, prefix="imgpull."):
        if info.name == "imgpull.__main__":  # importing it runs the command
            continue
        modules.append(importlib.import_module(info.name))
    return modules


def _package_exceptions() -> set[type[BaseException]]:
    found: set[type[BaseException]] = set()
    for module in _package_modules():
        for value in vars(module).values():
            if (
                isinstance(value, type)
                and issubclass(value, BaseException)
                and value.__module__.split(".")[0] == "imgpull"
            ):
                found.add(value)
    return found


def _qualified(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def test_all_is_sorted_and_unique() -> None:
    assert imgpull.__all__ == sorted(set(imgpull.__all__))


def test_all_imports_are_exported() -> None:
    # As httpx's test: every public name the module shows is in __all__, and
    # every name in __all__ resolves (the lazy ones included).
    shown = {
        name
        for name in dir(imgpull)
        if not name.startswith("_") and not isinstance(getattr(imgpull, name), ModuleType)
    }
    assert shown | {"__version__"} == set(imgpull.__all__)
    for name in imgpull.__all__:
        assert getattr(imgpull, name) is not None, name


def test_lazy_names_are_the_defining_modules_objects() -> None:
    for name, module in imgpull._LAZY.items():
        assert name in imgpull.__all__
        assert getattr(imgpull, name) is getattr(importlib.import_module(module), name)


def test_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="NoSuchThing"):
        imgpull.NoSuchThing  # type: ignore[attr-defined]  # noqa: B018


def test_every_public_exception_is_exported() -> None:
    exceptions = _package_exceptions()
    # Sanity: the walk saw the native errors and those outside errors.py.
    names = {_qualified(cls) for cls in exceptions}
    assert {"imgpull._core.DigestMismatchError", "imgpull.errors.ConfigError"} <= names
    assert names >= NOT_EXPORTED, "an exemption names a class that is gone"
    missing = {
        _qualified(cls)
        for cls in exceptions
        if not cls.__name__.startswith("_")
        and _qualified(cls) not in NOT_EXPORTED
        and getattr(imgpull, cls.__name__, None) is not cls
    }
    assert not missing, f"not exported from imgpull: {sorted(missing)}"


def test_every_exported_error_is_an_imgpull_error() -> None:
    # Some are also ValueErrors (InvalidReferenceError, InvalidPlatformError):
    # a bad argument string; still catchable as ImgpullError.
    errors = [
        name
        for name in imgpull.__all__
        if isinstance(getattr(imgpull, name), type)
        and issubclass(getattr(imgpull, name), BaseException)
    ]
    assert "ImageNotFoundError" in errors
    for name in errors:
        assert issubclass(getattr(imgpull, name), imgpull.ImgpullError), name


def test_mypy_sees_exported_names_and_only_those(tmp_path: Path) -> None:
    uses = "\n".join(f"    imgpull.{name}," for name in imgpull.__all__)
    (tmp_path / "good.py").write_text(
        "import imgpull\n\n"
        f"EVERY = (\n{uses}\n)\n\n\n"
        + textwrap.dedent(
            """\
            def images(root: str) -> list[imgpull.ImageSummary]:
                try:
                    with imgpull.Client(root=root) as client:
                        return client.images()
                except imgpull.ImageNotFoundError:
                    return []
            """
        )
    )
    (tmp_path / "bad.py").write_text(
        "import imgpull\n\ntry:\n    pass\nexcept imgpull.NoSuchThing:\n    pass\n"
    )
    # From tmp_path, so the project's mypy configuration does not apply.
    proc = subprocess.run(
        [
            sys.executable, "-m", "mypy", "--strict", "--no-incremental",
            "--cache-dir", str(tmp_path / "cache"), "good.py", "bad.py",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=240,
    )  # fmt: skip
    errors = [line for line in proc.stdout.splitlines() if ": error:" in line]
    assert errors == ['bad.py:5: error: Module has no attribute "NoSuchThing"  [attr-defined]'], (
        proc.stdout + proc.stderr
    )


def test_import_stays_cheap() -> None:
    # The errors (and the native module they come from) are loaded at once;
    # the client, and with it httpx, only on first use.
    code = (
        "import imgpull, sys\n"
        "imgpull.ImageNotFoundError, imgpull.DigestMismatchError, imgpull.__version__\n"
        "print(' '.join(sorted(sys.modules)))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    loaded = set(proc.stdout.split())
    assert "httpx" not in loaded
    assert "httpcore" not in loaded
    assert {m for m in loaded if m.startswith("imgpull")} == {
        "imgpull",
        "imgpull._core",
        "imgpull.errors",
    }
