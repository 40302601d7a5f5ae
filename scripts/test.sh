#!/usr/bin/env bash
# The whole test suite, as CI runs it. Installs or starts what the tests need when it
# is missing, then runs format and lint checks and every test in the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "toolchain"
cargo --version

step "services and tools the tests need"
# Debian packages the end-to-end tests run for real; installed only when missing.
need_packages=()
command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1 || need_packages+=(prometheus)
if [ ${#need_packages[@]} -gt 0 ]; then
  echo "installing: ${need_packages[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_packages[@]}" >/dev/null
fi
prometheus --version 2>&1 | head -n 1
# PostgreSQL: the accounts tests run on it for real (a fresh database per test,
# dropped afterwards) as well as on SQLite.
export VEIL_TEST_POSTGRES_URL="${VEIL_TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
pg_up() { pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; }
if ! command -v pg_isready >/dev/null 2>&1 || ! pg_up; then
  if ! command -v pg_ctlcluster >/dev/null 2>&1; then
    echo "installing: postgresql"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
  fi
  cluster=$(pg_lsclusters -h 2>/dev/null | awk 'NR==1 { print $1 " " $2 }')
  [ -n "$cluster" ] || { echo "no PostgreSQL cluster found after installing" >&2; exit 1; }
  conf="/etc/postgresql/${cluster% *}/${cluster#* }"
  # Local test server: trust on loopback, as on the machines this suite targets.
  if ! grep -q "veil test suite" "$conf/pg_hba.conf" 2>/dev/null; then
    sed -i '1i host all all 127.0.0.1/32 trust # veil test suite\nhost all all ::1/128 trust # veil test suite' "$conf/pg_hba.conf"
  fi
  pg_ctlcluster $cluster start || pg_ctlcluster $cluster reload || true
  for _ in $(seq 1 30); do pg_up && break; sleep 1; done
fi
pg_up || { echo "PostgreSQL is not answering on 127.0.0.1:5432" >&2; exit 1; }
psql "$VEIL_TEST_POSTGRES_URL" -Atc 'SELECT version()' | head -n 1
# The Compose specification validator (a PyPI package; it carries the schema offline).
export PATH="$HOME/.local/bin:$PATH"
if ! command -v check-jsonschema >/dev/null 2>&1; then
  command -v pip3 >/dev/null 2>&1 || { apt-get update -qq; apt-get install -y -qq python3-pip >/dev/null; }
  python3 -m pip install --quiet --user check-jsonschema 2>/dev/null \
    || python3 -m pip install --quiet --user --break-system-packages check-jsonschema
fi
check-jsonschema --version

step "format"
cargo fmt --all -- --check

step "lint"
cargo clippy --locked --workspace --all-targets -- -D warnings

step "dependencies"
# Licences, banned crates (OpenSSL bindings, a second tokio/TLS/WebRTC line) and sources,
# from deny.toml. The RustSec advisory database is a git repository this machine cannot
# reach, so advisories are not checked here (docs/security.md).
if ! command -v cargo-deny >/dev/null 2>&1; then
  echo "installing: cargo-deny"
  cargo install --locked --quiet cargo-deny
fi
# cargo deny reads the metadata of every platform's crates; a build fetches only this
# platform's, so fetch the rest from the registry first.
cargo fetch --locked --quiet
cargo deny --offline check licenses bans sources

step "web client tests (node)"
# SFrame and key management in the browser's JavaScript, against RFC 9605's vectors
# and the Rust implementation's fixtures.
if ! command -v node >/dev/null 2>&1; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs >/dev/null
fi
node_flags=()
# Debian 12's nodejs is 18, where WebCrypto on globalThis still needs a flag.
[ "$(node -p 'process.versions.node.split(".")[0]')" -ge 19 ] || node_flags+=(--experimental-global-webcrypto)
web_log=$(mktemp)
node "${node_flags[@]}" --test web/test/ 2>&1 | tee "$web_log"

# --- browser tests (tests/browser.rs, tests/browser_e2ee.rs, tests/browser_accounts.rs):
# Chromium and playwright-core
step "browser tests' tools"
if ! command -v chromium >/dev/null 2>&1; then
  echo "installing: chromium"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
chromium --version 2>/dev/null | head -n 1
if [ ! -d web/e2e/node_modules ]; then
  command -v npm >/dev/null 2>&1 || { apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq npm >/dev/null; }
  (cd web/e2e && npm ci --no-audit --no-fund)
fi
# --- end of browser tests' tools ---------------------------------------------------------

step "tests"
# WebRTC tests keep every peer on loopback; they run a few at a time so that two
# cores are not oversubscribed by many simultaneous peer connections.
log=$(mktemp)
trap 'rm -f "$log" "$web_log"' EXIT
cargo test --locked --workspace -- --test-threads=2 2>&1 | tee "$log"
# One closing line for the whole suite (cargo prints one per test binary, the last of
# which is often an empty doc-test run).
awk '/^test result:/ { p += $4; f += $6 }
     /^# pass / { p += $3 } /^# fail / { f += $3 }
     END { printf "\nsuite: %d passed, %d failed\n", p, f }' "$log" "$web_log"
