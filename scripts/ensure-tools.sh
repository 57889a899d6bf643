#!/usr/bin/env bash
# Installs what the project needs on a fresh machine, and nothing that is already there:
# cargo-nextest, the PostgreSQL server (the local cluster and the real-database tests) and,
# for the Kubernetes schema checks, kubernetes-validate in a project-local virtualenv.
# for the real-cluster tier (k8s): containerd, runc, the CNI plugins, iptables, mmdebstrap,
# busybox and the musl toolchain for the operator image; for the partition tests (netlab, as
# root): iproute2 and iptables.
# Usage: ensure-tools.sh [postgres|nextest|validate|netlab|k8s ...]   (default: all but k8s)
set -euo pipefail
cd "$(dirname "$0")/.."

wanted="${*:-postgres nextest validate netlab}"
want() { [[ " $wanted " == *" $1 "* ]]; }

have() { command -v "$1" >/dev/null 2>&1; }

# Free space of the filesystem holding $1, for messages ("12G").
free_space() { df -h --output=avail "$1" 2>/dev/null | tail -1 | tr -d ' '; }

# A clean checkout's build and the whole suite (the Kubernetes node's images and data
# included) take about $need_gb GB; with less, builds and databases fail part-way with
# "No space left on device" far from the cause, so say it first.
need_gb=12
for dir in . "${TMPDIR:-/tmp}"; do
  avail_gb=$(df -BG --output=avail "$dir" 2>/dev/null | tail -1 | tr -dc 0-9)
  if [ -n "$avail_gb" ] && [ "$avail_gb" -lt "$need_gb" ]; then
    echo "warning: only ${avail_gb} GB free for $(cd "$dir" && pwd); building and running every test needs about ${need_gb} GB" >&2
  fi
done

if want nextest && ! cargo nextest --version >/dev/null 2>&1; then
  echo "installing cargo-nextest"
  cargo install --locked cargo-nextest
fi

pg_found=false
for d in /usr/lib/postgresql/*/bin /usr/pgsql/bin; do
  if [ -x "$d/initdb" ] && [ -x "$d/pg_rewind" ] && [ -x "$d/pg_basebackup" ]; then pg_found=true; fi
done
if have initdb && have pg_rewind; then pg_found=true; fi
if want postgres && ! $pg_found; then
  echo "installing the PostgreSQL server"
  if [ "$(id -u)" -eq 0 ] && have apt-get; then
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
  else
    echo "error: PostgreSQL server binaries (initdb, pg_rewind...) are missing; install PostgreSQL 13 or later" >&2
    exit 1
  fi
fi

if [ "$(id -u)" -eq 0 ] && ! id postgres >/dev/null 2>&1 && ! id nobody >/dev/null 2>&1; then
  echo "error: running as root needs an unprivileged user (postgres or nobody) for the databases" >&2
  exit 1
fi

if want netlab && [ "$(id -u)" -eq 0 ] && have apt-get; then
  missing=()
  for pkg in iproute2 iptables; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    echo "installing ${missing[*]} (network partition tests)"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
fi

if want k8s; then
  missing=()
  for pkg in containerd runc containernetworking-plugins iptables mmdebstrap busybox-static musl-tools; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    if [ "$(id -u)" -eq 0 ] && have apt-get; then
      echo "installing ${missing[*]}"
      DEBIAN_FRONTEND=noninteractive apt-get update -qq
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    else
      echo "error: the one-node Kubernetes cluster needs ${missing[*]} (Debian packages) and root" >&2
      exit 1
    fi
  fi
  if ! rustup target list --installed 2>/dev/null | grep -qx x86_64-unknown-linux-musl; then
    echo "installing the Rust target x86_64-unknown-linux-musl"
    rustup target add x86_64-unknown-linux-musl
  fi
  have go || { echo "error: the one-node Kubernetes cluster builds its components with Go (go1.24 or later)" >&2; exit 1; }
fi

if want validate && [ -f scripts/requirements-validate.txt ]; then
  if [ ! -x .venv/bin/kubernetes-validate ]; then
    echo "installing kubernetes-validate into .venv"
    # A half-made environment from an interrupted run would be taken as made next time.
    rm -rf .venv
    if ! python3 -m venv .venv; then
      rm -rf .venv
      # Debian's python3 ships venv's pip bootstrap (ensurepip) in a package of its own.
      if ! python3 -c 'import ensurepip' 2>/dev/null && [ "$(id -u)" -eq 0 ] && have apt-get; then
        echo "installing python3-venv"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
      fi
      python3 -m venv .venv || {
        rm -rf .venv
        echo "error: 'python3 -m venv .venv' failed (above); it needs python3's venv and ensurepip" \
          "modules (Debian: python3-venv) and free disk space ($(free_space .) here," \
          "$(free_space "${TMPDIR:-/tmp}") in ${TMPDIR:-/tmp})" >&2
        exit 1
      }
    fi
    .venv/bin/pip install --quiet --disable-pip-version-check -r scripts/requirements-validate.txt || {
      rm -rf .venv
      echo "error: installing scripts/requirements-validate.txt from PyPI into .venv failed (above)" >&2
      exit 1
    }
  fi
fi
