#!/usr/bin/env bash
# The whole test suite, for a fresh Debian machine with only the Rust toolchain:
# system packages, rustfmt, clippy, the library without default features (built, and its
# request-plane suite run on TCP), pyzmq in a venv (the ZMQ event plane's libzmq interop
# tests), the tests of every workspace package (the library, `cli/`, `testkit/`: unit,
# integration and doc tests), a quick run of the latency benchmark and a fuzz smoke run
# of every codec fuzz target.
#
# Environment:
#   CI=true          missing system packages that cannot be installed are an error, and
#                    fuzzing is never skipped
#   FUZZ_SECONDS=N   seconds per fuzz target (default 30); 0 skips fuzzing outside CI
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

FUZZ_SECONDS="${FUZZ_SECONDS:-30}"
FUZZ_TARGETS=(decode_arbitrary decode_split decode_event)
# command the tests run -> Debian package that provides it
declare -A SYSTEM_PACKAGES=(
    [nats-server]=nats-server
    [etcd]=etcd-server
    [etcdctl]=etcd-client
    [protoc]=protobuf-compiler
)

section() {
    printf '\n==== %s ====\n' "$*"
}

in_ci() {
    case "${CI:-}" in
        true | TRUE | True | 1 | yes) return 0 ;;
        *) return 1 ;;
    esac
}

# Runs its arguments as root: directly when we are root, through sudo otherwise
# (non-interactively when there is no terminal to ask for a password on).
as_root() {
    if [[ $EUID -eq 0 ]]; then
        "$@"
    elif [[ -t 0 ]]; then
        sudo "$@"
    else
        sudo -n "$@"
    fi
}

# file the build needs -> Debian package that provides it (etcd-client's protos import
# protobuf's well-known types)
declare -A SYSTEM_FILES=(
    [/usr/include/google/protobuf/descriptor.proto]=libprotobuf-dev
)

missing_packages() {
    local cmd file
    {
        for cmd in "${!SYSTEM_PACKAGES[@]}"; do
            command -v "$cmd" >/dev/null 2>&1 || echo "${SYSTEM_PACKAGES[$cmd]}"
        done
        for file in "${!SYSTEM_FILES[@]}"; do
            [[ -e $file ]] || echo "${SYSTEM_FILES[$file]}"
        done
    } | sort -u
}

ensure_system_packages() {
    section "System packages: ${SYSTEM_PACKAGES[*]} ${SYSTEM_FILES[*]}"
    local missing
    missing="$(missing_packages)"
    if [[ -z $missing ]]; then
        echo "all present"
        return
    fi
    echo "missing: ${missing//$'\n'/ }"
    if command -v apt-get >/dev/null 2>&1 && { [[ $EUID -eq 0 ]] || command -v sudo >/dev/null 2>&1; }; then
        as_root apt-get update
        # shellcheck disable=SC2086 # one word per package
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $missing
        missing="$(missing_packages)"
    else
        echo "cannot install them here (needs apt-get, and root or sudo)"
    fi
    if [[ -n $missing ]]; then
        local message="still missing: ${missing//$'\n'/ }; install these Debian packages by hand"
        if in_ci; then
            echo "error: $message" >&2
            exit 1
        fi
        echo "warning: $message (tests that need them will fail)" >&2
    fi
}

# pyzmq (wheels bundle libzmq) in target/pyzmq-venv; the tests find it through
# PLANEWIRE_PYTHON. `python3 -m venv` needs Debian's python3-venv.
PYZMQ_VENV=target/pyzmq-venv
ensure_pyzmq() {
    section "pyzmq in $PYZMQ_VENV"
    if ! "$PYZMQ_VENV/bin/python" -c 'import zmq' >/dev/null 2>&1; then
        if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
            if command -v apt-get >/dev/null 2>&1 && { [[ $EUID -eq 0 ]] || command -v sudo >/dev/null 2>&1; }; then
                as_root apt-get update
                as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3-venv
            fi
        fi
        rm -rf "$PYZMQ_VENV"
        if ! { python3 -m venv "$PYZMQ_VENV" && "$PYZMQ_VENV/bin/pip" install --quiet pyzmq; }; then
            local message="cannot install pyzmq in $PYZMQ_VENV (needs python3 with venv, Debian package python3-venv, and PyPI access)"
            if in_ci; then
                echo "error: $message" >&2
                exit 1
            fi
            echo "warning: $message (the libzmq interop tests will be skipped)" >&2
            return
        fi
    fi
    PLANEWIRE_PYTHON="$PWD/$PYZMQ_VENV/bin/python"
    export PLANEWIRE_PYTHON
    "$PLANEWIRE_PYTHON" -c 'import zmq; print("pyzmq", zmq.__version__, "libzmq", zmq.zmq_version())'
}

ensure_rust_components() {
    section "Rust components: rustfmt, clippy"
    local missing=()
    cargo fmt --version >/dev/null 2>&1 || missing+=(rustfmt)
    cargo clippy --version >/dev/null 2>&1 || missing+=(clippy)
    if [[ ${#missing[@]} -gt 0 ]]; then
        if ! command -v rustup >/dev/null 2>&1; then
            echo "error: missing ${missing[*]} and rustup is not available to add them" >&2
            exit 1
        fi
        rustup component add "${missing[@]}"
    fi
    cargo fmt --version
    cargo clippy --version
}

fuzz_smoke() {
    if [[ $FUZZ_SECONDS == 0 ]]; then
        if in_ci; then
            echo "FUZZ_SECONDS=0 is ignored in CI: fuzzing for 30 s per target"
            FUZZ_SECONDS=30
        else
            section "Fuzz smoke: skipped (FUZZ_SECONDS=0)"
            return
        fi
    fi
    section "Fuzz smoke: cargo-fuzz"
    df -h .
    if ! cargo fuzz --version >/dev/null 2>&1; then
        cargo install cargo-fuzz --locked
    fi
    cargo fuzz --version
    local target
    for target in "${FUZZ_TARGETS[@]}"; do
        section "Fuzz smoke: $target for ${FUZZ_SECONDS} s"
        # libFuzzer exits non-zero on a crash, a leak or an input running past -timeout.
        RUSTC_BOOTSTRAP=1 cargo fuzz run "$target" -- \
            -max_total_time="$FUZZ_SECONDS" -timeout=60
    done
}

if ! [[ $FUZZ_SECONDS =~ ^[0-9]+$ ]]; then
    echo "error: FUZZ_SECONDS must be a whole number of seconds, not '$FUZZ_SECONDS'" >&2
    exit 2
fi

# A clean CI build must fit the machine's disk: incremental caches only pay off on rebuilds,
# which CI never does. Free space is printed to explain a build that dies of a full disk.
if in_ci; then
    export CARGO_INCREMENTAL=0
fi
section "Disk space"
df -h .

ensure_system_packages
ensure_rust_components
ensure_pyzmq

section "cargo fmt --check"
cargo fmt --all -- --check
cargo fmt --manifest-path fuzz/Cargo.toml --all -- --check

section "cargo clippy (every package, all targets, all features)"
cargo clippy --workspace --all-targets --all-features -- -D warnings

section "cargo build -p planewire --no-default-features (the library, TCP plane alone)"
cargo build -p planewire --no-default-features

section "cargo test -p planewire --no-default-features (unit tests, the request-plane suite on TCP)"
cargo test -p planewire --no-default-features --lib --test request_planes

section "cargo test --workspace --all-features (unit, integration and doc tests)"
cargo test --workspace --all-features

# Timing-heavy, so not part of `cargo test`; run here so the benchmark never rots.
section "Latency benchmark, quick mode"
BENCH_OUTPUTS=(target/bench-quick.json target/bench-quick.png)
rm -f "${BENCH_OUTPUTS[@]}"
cargo run --release -- bench --quick --plane http --json "${BENCH_OUTPUTS[0]}" --plot "${BENCH_OUTPUTS[1]}"
for output in "${BENCH_OUTPUTS[@]}"; do
    if [[ ! -s $output ]]; then
        echo "error: bench --quick did not write $output" >&2
        exit 1
    fi
done

fuzz_smoke

section "All checks passed"
