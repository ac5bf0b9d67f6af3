#!/usr/bin/env bash
# The lerobot 0.6.x test environment: Python 3.13 + requirements-lerobot06.txt in a Debian 13 (trixie) root.
#
#   scripts/lerobot06_env.sh build          build (once; a rerun with nothing changed returns in a second)
#   scripts/lerobot06_env.sh run CMD...     build if the stamp is stale, then run CMD in the checkout inside the
#                                           root (venv python first on PATH)
#   scripts/lerobot06_env.sh preflight OUT  exit 0 if `make test-lerobot-0.6` can run with LEROBOT06_OUT=OUT;
#                                           3 with a SKIPPED line when not root; 2 when OUT is outside the checkout
#   scripts/lerobot06_env.sh stamp          print the stamp a ready venv must carry (pins + install recipe)
#
# Why a root: this Debian 12 host has Python 3.11 and lerobot >= 0.5 needs Python >= 3.12; trixie has 3.13.
# Why the host's pip downloads the wheels: pip on 3.13 (strict X.509) rejects this network's TLS interception
# certificate, so the root installs offline (--no-index --find-links) from a wheelhouse filled by the host.
# Everything lives outside the checkout, under LEROBOT06_HOME (default /opt/smolvla-cls), so a warm CI machine
# reuses it: trixie-root/ (with the venv at /opt/venv inside), wheelhouse/. Needs root (debootstrap, chroot).
# Commands run under `unshare --mount`: the bind mounts (/proc, /sys, /dev, the checkout, the wheelhouse)
# live in a private mount namespace and vanish with it, even if this script is killed.
# Concurrency: LEROBOT06_HOME is shared by every checkout and CI run on the machine, so `build` holds an
# exclusive flock on $LEROBOT06_HOME/lock and `run` a shared one for the whole command (inherited by it): a
# build never deletes a venv that a run is using, and two builds never share $ROOT.tmp.
set -euo pipefail
HOME_DIR=${LEROBOT06_HOME:-/opt/smolvla-cls}
ROOT="$HOME_DIR/trixie-root"
WHEELS="$HOME_DIR/wheelhouse"
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
HOST_PY=${HOST_PY:-/opt/venvs/smolvla-cls/bin/python}
CHECKOUT=$(cd "$(dirname "$0")/.." && pwd)
REQ="$CHECKOUT/requirements-lerobot06.txt"
SDIST_ONLY="docopt"  # pins with no wheel on PyPI: built (pure Python) by the host's pip
PLATFORMS="manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64
 manylinux2014_x86_64 manylinux_2_12_x86_64 manylinux2010_x86_64 manylinux_2_5_x86_64 manylinux1_x86_64
 manylinux_2_31_x86_64 manylinux_2_34_x86_64 linux_x86_64"
log() { echo "[lerobot06_env] $*"; }

need_root() {
  [ "$(id -u)" = 0 ] || { log "needs root (debootstrap, chroot, mount namespaces)"; exit 2; }
}

preflight() {  # preflight OUT: can `make test-lerobot-0.6` run here, writing to OUT (relative to the checkout)?
  local out=${1:-} resolved
  if [ "$(id -u)" != 0 ]; then
    echo "SKIPPED make test-lerobot-0.6: the lerobot 0.6 root needs root (debootstrap, chroot, mount" \
      "namespaces) and this run is uid $(id -u); the main-environment tests are unaffected"
    exit 3
  fi
  resolved=$(realpath -m "$CHECKOUT/$out")
  case "$out" in /*) resolved=/ ;; esac  # absolute paths do not exist inside the root, even in the checkout
  case "$resolved" in
    "$CHECKOUT"/?*) ;;
    *) log "LEROBOT06_OUT='$out' must be a relative path strictly inside the checkout ($CHECKOUT): only the" \
         "checkout is bind-mounted into the root (at /checkout); e.g. LEROBOT06_OUT=outputs/lerobot06"
       exit 2 ;;
  esac
}

lock() {  # lock -x|-s: take the lock on fd 9 (kept by every child, so by the command `run` starts)
  mkdir -p "$HOME_DIR"
  exec 9>>"$HOME_DIR/lock"
  flock -n "$1" 9 || { log "waiting for another build/run on $HOME_DIR (lock $HOME_DIR/lock)"; flock "$1" 9; }
}

build_root() {
  if [ -x "$ROOT/usr/bin/python3.13" ]; then return; fi
  command -v debootstrap >/dev/null || { log "installing debootstrap"; apt-get update -qq; apt-get install -y -qq debootstrap; }
  log "debootstrap trixie -> $ROOT (~2 min)"
  rm -rf "$ROOT.tmp"
  debootstrap --variant=minbase --include=python3.13,python3.13-venv,python3-pip,ca-certificates \
    trixie "$ROOT.tmp" "$MIRROR" > "$HOME_DIR/debootstrap.log" 2>&1 \
    || { log "debootstrap failed: see $HOME_DIR/debootstrap.log"; exit 1; }
  mv "$ROOT.tmp" "$ROOT"  # only a complete root gets the final name
}

fill_wheelhouse() {
  mkdir -p "$WHEELS"
  local pins platform_args=() sdist
  pins=$(mktemp)
  grep -E '^[a-z0-9]' "$REQ" | grep -v -E "^($(echo "$SDIST_ONLY" | tr ' ' '|'))==" > "$pins"
  for p in $PLATFORMS; do platform_args+=(--platform "$p"); done
  log "downloading $(wc -l < "$pins") pinned wheels for cp313 into $WHEELS (first run ~4 GB)"
  local out="$HOME_DIR/pip-download.log"
  "$HOST_PY" -m pip download -q --no-deps --dest "$WHEELS" --python-version 3.13 --implementation cp \
    --abi cp313 --abi abi3 --abi none --only-binary=:all: "${platform_args[@]}" -r "$pins" > "$out" 2>&1 \
    || { grep -v "^WARNING: Location" "$out" | tail -20; log "wheel download failed (log: $out)"; exit 1; }
  for sdist in $SDIST_ONLY; do
    "$HOST_PY" -m pip wheel -q --no-deps --no-binary=:all: -w "$WHEELS" "$(grep -E "^$sdist==" "$REQ")" \
      > "$out" 2>&1 || { tail -20 "$out"; log "building the $sdist wheel failed (log: $out)"; exit 1; }
  done
  rm -f "$pins"
}

in_root() {  # in_root CMD...: run CMD inside the root, checkout at /checkout, in a private mount namespace
  unshare --mount --propagation private -- bash -euc '
    root=$1; checkout=$2; wheels=$3; shift 3
    mkdir -p "$root/checkout" "$root/wheelhouse"
    mount --rbind /proc "$root/proc"; mount --rbind /sys "$root/sys"; mount --rbind /dev "$root/dev"
    mount --bind "$checkout" "$root/checkout"; mount --bind "$wheels" "$root/wheelhouse"
    cp -L /etc/resolv.conf "$root/etc/resolv.conf" 2>/dev/null || true
    exec chroot "$root" /usr/bin/env -i HOME=/tmp/home PATH=/opt/venv/bin:/usr/bin:/bin LANG=C.UTF-8 \
      PYTHONPATH=/checkout PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false \
      /bin/bash -c "mkdir -p /tmp/home && cd /checkout && \"\$@\"" _ "$@"
  ' _ "$ROOT" "$CHECKOUT" "$WHEELS" "$@"
}

install_venv() {
  log "installing into $ROOT/opt/venv (offline, from the wheelhouse)"
  rm -rf "$ROOT/opt/venv"
  in_root python3.13 -m venv /opt/venv
  in_root /opt/venv/bin/python -m pip install -q --no-index --find-links /wheelhouse -r /checkout/requirements-lerobot06.txt
  in_root /opt/venv/bin/python -c "import lerobot, torch, transformers, sys; print('[lerobot06_env] python', \
sys.version.split()[0], 'lerobot', lerobot.__version__, 'torch', torch.__version__, 'transformers', transformers.__version__)"
}

STAMP="$ROOT/opt/venv/.smolvla-cls-stamp"
wanted_stamp() {  # the pins plus the recipe that builds the venv (not comments, locking or `run`): a change
  # to either makes the next build/run reinstall; an edit elsewhere in this script does not
  { cat "$REQ"; echo "$SDIST_ONLY $PLATFORMS"; declare -f build_root fill_wheelhouse in_root install_venv; } \
    | sha256sum | cut -c1-16
}

build() {  # returns at once (holding the shared lock) when the stamp matches; else rebuilds under the exclusive one
  need_root
  local want t0=$SECONDS mode
  want=$(wanted_stamp)
  for mode in -s -x; do  # a matching stamp needs only the shared lock, so concurrent runs do not queue
    lock "$mode"
    if [ "$(cat "$STAMP" 2>/dev/null)" = "$want" ]; then
      log "ready ($ROOT, stamp $want)"; return
    fi
  done
  log "stamp '$(cat "$STAMP" 2>/dev/null || echo none)' != wanted $want: (re)building"
  build_root
  fill_wheelhouse
  install_venv
  echo "$want" > "$STAMP"
  log "built in $((SECONDS - t0)) s"
}

run() {  # build if stale, then CMD under the shared lock, re-checking the stamp once that lock is held
  local tries
  for tries in 1 2 3; do
    build
    lock -s  # converting the lock is not atomic: another checkout's build may slip in, hence the re-check
    if [ "$(cat "$STAMP" 2>/dev/null)" = "$(wanted_stamp)" ]; then in_root "$@"; return $?; fi
    log "the venv changed while waiting for the lock (try $tries)"
  done
  log "another checkout keeps rebuilding $ROOT with different requirements; giving up"; exit 1
}

case "${1:-}" in
  build) build ;;
  run) shift; run "$@" ;;
  preflight) preflight "${2:-}" ;;
  stamp) wanted_stamp ;;
  *) echo "usage: $0 build | run CMD... | preflight OUT | stamp" >&2; exit 2 ;;
esac
