#!/usr/bin/env bash
# Install what is missing, build imgpull, and run every check and test.
#
#   ./scripts/test.sh [pytest args...]      e.g. ./scripts/test.sh -k pull -x
#
# Phases: system packages, Python packages, Rust tests, clippy, wheel build +
# install, ruff, mypy, pytest.  A failing phase doesn't stop the cheap ones
# after it (one CI run should report every problem), but pytest is not run on
# a stale install when the build failed.  Exits non-zero if anything failed.
#
# Environment:
#   IMGPULL_BUILD_PROFILE=release|dev   wheel profile (default release: the
#                                       benchmarks measure the real thing)
#   IMGPULL_TEST_SKIP="clippy ruff"     phases to skip locally (ignored when CI=true)
#   PYTHON=python3                      interpreter to install into and test with
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

# One target dir, inside the checkout: reruns are incremental and the wheel
# build reuses what cargo built before.
export CARGO_TARGET_DIR="$ROOT/target"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
export PIP_DISABLE_PIP_VERSION_CHECK=1
export PIP_ROOT_USER_ACTION=ignore
export DEBIAN_FRONTEND=noninteractive
PROFILE="${IMGPULL_BUILD_PROFILE:-release}"
SKIP=" ${IMGPULL_TEST_SKIP:-} "
if [[ "${CI:-}" == "true" && -n "${IMGPULL_TEST_SKIP:-}" ]]; then
    echo "test.sh: CI=true, ignoring IMGPULL_TEST_SKIP" >&2
    SKIP="  "
fi

SUDO=()
if [[ "$(id -u)" -ne 0 ]]; then SUDO=(sudo); fi

declare -a SUMMARY=()
FAILED=0
BUILD_OK=1

# phase NAME CMD...: run CMD, time it, record pass/fail, keep going.
# Note: bash ignores `set -e` inside a function run as `f || ...`, so every
# phase function below checks its own steps with `|| return`.
phase() {
    local name="$1"; shift
    if [[ "$SKIP" == *" $name "* ]]; then
        echo "=== $name: SKIPPED (IMGPULL_TEST_SKIP)"
        SUMMARY+=("$(printf '%-14s %-7s' "$name" skipped)")
        return 0
    fi
    echo "=== $name: $*"
    local start=$SECONDS rc=0
    "$@" || rc=$?
    local took=$((SECONDS - start))
    if [[ $rc -eq 0 ]]; then
        SUMMARY+=("$(printf '%-14s %-7s %5ss' "$name" ok "$took")")
    else
        SUMMARY+=("$(printf '%-14s %-7s %5ss  (exit %s)' "$name" FAILED "$took" "$rc")")
        FAILED=1
    fi
    echo "=== $name: exit $rc after ${took}s"
    return $rc
}

# --- system packages -------------------------------------------------------
install_system_packages() {
    local missing=() pair
    # command:package. umoci: tests/e2e/test_export*.py compare rootfs exports with it.
    # nasm, autoconf, automake, libtool, make: the isal-sys crate builds
    # Intel's ISA-L (our gzip inflater) from source.
    for pair in docker-registry:docker-registry skopeo:skopeo openssl:openssl umoci:umoci \
        nasm:nasm autoreconf:autoconf automake:automake libtoolize:libtool make:make; do
        command -v "${pair%%:*}" >/dev/null || missing+=("${pair#*:}")
    done
    if [[ ${#missing[@]} -gt 0 ]]; then
        echo "installing from Debian: ${missing[*]}"
        "${SUDO[@]}" apt-get update -q || return
        "${SUDO[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}" || return
    fi
    # No Rust toolchain can be fetched here (rustup's servers are out of
    # reach): the machine must come with one, clippy included.
    command -v cargo >/dev/null || { echo "cargo is missing: install a Rust toolchain" >&2; return 1; }
    cargo clippy --version >/dev/null 2>&1 || { echo "clippy is missing (rustup component add clippy)" >&2; return 1; }
    docker-registry --version && skopeo --version
}

# --- Python ------------------------------------------------------------------
PY="${PYTHON:-python3}"

choose_python() {
    command -v "$PY" >/dev/null || { echo "$PY not found" >&2; return 1; }
    # A distribution Python marked externally-managed (PEP 668) refuses
    # `pip install`; use a venv in the checkout then.  A pyenv/python.org
    # Python (as on the project's machines) is installed into directly, so
    # `imgpull` lands on PATH as the README's set-up says.
    if "$PY" - <<'EOF'
import pathlib, sys, sysconfig
marker = pathlib.Path(sysconfig.get_path("stdlib")) / "EXTERNALLY-MANAGED"
sys.exit(0 if marker.exists() and sys.prefix == sys.base_prefix else 1)
EOF
    then
        if [[ ! -x .venv/bin/python ]]; then
            "$PY" -m venv .venv || {
                "${SUDO[@]}" apt-get update -q \
                    && "${SUDO[@]}" apt-get install -y -q python3-venv \
                    && "$PY" -m venv .venv
            } || return
        fi
        PY="$ROOT/.venv/bin/python"
        export PATH="$ROOT/.venv/bin:$PATH"
    fi
    "$PY" --version
}

install_python_packages() {
    # The runtime and test dependencies as pyproject.toml lists them, plus
    # maturin to build and bcrypt for the htpasswd files of the test registry.
    local deps
    deps="$("$PY" - <<'EOF'
import tomllib
with open("pyproject.toml", "rb") as f:
    p = tomllib.load(f)
deps = list(p["project"].get("dependencies", []))
deps += p["project"].get("optional-dependencies", {}).get("test", [])
deps += p["build-system"]["requires"]
deps.append("bcrypt>=4")
print("\n".join(dict.fromkeys(deps)))
EOF
)" || return
    local args=()
    mapfile -t args <<<"$deps"
    "$PY" -m pip install -q "${args[@]}"
}

python_libdir() {
    "$PY" -c 'import sysconfig; print(sysconfig.get_config_var("LIBDIR") or "")'
}

# --- Rust --------------------------------------------------------------------
cargo_test() {
    # pyo3's build script must find the same Python the wheel is built for;
    # LIBDIR on the loader path lets a test binary that links libpython run.
    PYO3_PYTHON="$PY" LD_LIBRARY_PATH="$(python_libdir)${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" \
        cargo test --workspace
}

# --- build and install -------------------------------------------------------
build_and_install() {
    # A wheel folder of this run's own: another run in the same checkout
    # (several people share one) must not pick up or delete our wheel.
    mkdir -p "$CARGO_TARGET_DIR" || return
    local out
    out="$(mktemp -d "$CARGO_TARGET_DIR/wheels.XXXXXX")" || return
    WHEEL_DIR="$out"
    local flags=(--release)
    [[ "$PROFILE" == "dev" ]] && flags=()
    # `maturin develop` wants a virtualenv; a wheel installs into any Python.
    PYO3_PYTHON="$PY" "$PY" -m maturin build "${flags[@]}" -i "$PY" -o "$out" || return
    local wheels=("$out"/imgpull-*.whl)
    [[ -f "${wheels[0]}" ]] || { echo "maturin built no wheel" >&2; return 1; }
    "$PY" -m pip install -q --force-reinstall --no-deps "${wheels[0]}" || return
    # Prove the installed package and its native module import, from outside
    # the checkout so python/ on the cwd can't shadow the install.
    (cd / && "$PY" -c 'import imgpull, imgpull._core; print("imgpull", imgpull.__version__, "from", imgpull.__file__)')
}

existing() { for p in "$@"; do [[ -e "$p" ]] && echo "$p"; done; return 0; }

ruff_check() {
    local paths=()
    mapfile -t paths < <(existing python tests benches)
    "$PY" -m ruff check "${paths[@]}"
}

mypy_check() {
    # The package, strict, as configured in pyproject.toml; then the test
    # support (tests' other files may be looser, so they aren't held to it).
    local rc=0
    "$PY" -m mypy || rc=$?
    "$PY" -m mypy --strict tests/support tests/conftest.py tests/e2e/conftest.py || rc=$?
    # The hand-written stubs of the native module against the built module.
    (cd / && "$PY" -m mypy.stubtest imgpull._core) || rc=$?
    return $rc
}

run_pytest() {
    if [[ $BUILD_OK -ne 1 ]]; then
        echo "not running pytest: the build/install failed, the installed imgpull would be stale" >&2
        return 1
    fi
    # From the repo root with the installed package: tests import imgpull
    # from site-packages, tests/support via tests/conftest.py's folder.
    # testpaths (pyproject.toml): tests/unit, then tests/e2e.
    "$PY" -m pytest -q "$@"
}

WHEEL_DIR=""
cleanup() { [[ -n "$WHEEL_DIR" ]] && rm -rf "$WHEEL_DIR"; return 0; }
trap cleanup EXIT

TOTAL_START=$SECONDS
phase system-deps install_system_packages || true
phase python choose_python || { echo "no usable Python" >&2; exit 1; }
phase python-deps install_python_packages || true
phase cargo-test cargo_test || true
phase clippy env PYO3_PYTHON="$PY" cargo clippy --workspace --all-targets -- -D warnings || true
phase build build_and_install || BUILD_OK=0
phase ruff ruff_check || true
phase mypy mypy_check || true
phase pytest run_pytest "$@" || true

echo
echo "=== summary (total $((SECONDS - TOTAL_START))s)"
printf '  %s\n' "${SUMMARY[@]}"
if [[ $FAILED -ne 0 ]]; then
    echo "test.sh: FAILED" >&2
    exit 1
fi
echo "test.sh: all passed"
