#!/usr/bin/env bash
# CI: build the container image with podman from a debootstrap-made Debian base (no registry, no
# package index), run it with its defaults on 127.0.0.1 and check it for real. Any failure exits
# non-zero. Called by .ci/run; runnable on its own (as root: it may apt-get install podman).
#
#   DERMTRIAGE_CI_CONTAINER  always | auto (default) | never
#       auto: run when Dockerfile, .dockerignore, pyproject.toml or .ci/ differ from the previous
#       commit (or from main's merge base on another branch), or have uncommitted changes.
#   DERMTRIAGE_CI_CACHE      where the Debian rootfs is cached between runs (/var/cache/dermtriage-ci)
#   DERMTRIAGE_DATA          development photos (default ../shared/data/pad-ufes-20)
set -euo pipefail
cd "$(dirname "$0")/.."

MODE="${DERMTRIAGE_CI_CONTAINER:-auto}"
CACHE="${DERMTRIAGE_CI_CACHE:-/var/cache/dermtriage-ci}"
DATA="${DERMTRIAGE_DATA:-$(pwd)/../shared/data/pad-ufes-20}"
BASE_IMAGE="localhost/dermtriage-base:bookworm"
IMAGE="localhost/dermtriage:ci"
WATCHED=(Dockerfile .dockerignore pyproject.toml .ci)
T0=$(date +%s)

log() { echo "container: $*"; }
fail() { echo "container CHECK FAILED: $*" >&2; exit 1; }

case "$MODE" in
  never) log "skipped (DERMTRIAGE_CI_CONTAINER=never)"; exit 0 ;;
  always) ;;
  auto)
    changed=""
    if git rev-parse --git-dir >/dev/null 2>&1; then
      base=""
      branch=$(git rev-parse --abbrev-ref HEAD)
      if [ "$branch" != main ] && git rev-parse --verify -q main >/dev/null; then
        base=$(git merge-base HEAD main)
        [ "$base" = "$(git rev-parse HEAD)" ] && base=""
      fi
      [ -z "$base" ] && base=$(git rev-parse -q --verify HEAD~1 || true)
      if [ -z "$base" ]; then
        changed="no previous commit"
      else
        changed=$( { git diff --name-only "$base" HEAD -- "${WATCHED[@]}"; git diff --name-only HEAD -- "${WATCHED[@]}"; } | sort -u | tr '\n' ' ')
      fi
    else
      changed="not a git checkout"
    fi
    if [ -z "$changed" ]; then
      log "skipped: ${WATCHED[*]} unchanged (DERMTRIAGE_CI_CONTAINER=always forces the check)"
      exit 0
    fi
    log "running: changed: $changed" ;;
  *) fail "DERMTRIAGE_CI_CONTAINER must be always, auto or never (got $MODE)" ;;
esac

[ -f "$DATA/metadata.csv" ] || fail "development data not found at $DATA (set DERMTRIAGE_DATA)"

# --- tools ---------------------------------------------------------------------------------------
if ! command -v podman >/dev/null || ! command -v runc >/dev/null || ! command -v debootstrap >/dev/null; then
  [ "$(id -u)" = 0 ] || fail "podman, runc and debootstrap are missing and this is not root"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman runc debootstrap
fi
podman --version

# --- base image: debootstrap (cached rootfs) + podman import ---------------------------------------
if ! podman image exists "$BASE_IMAGE"; then
  mkdir -p "$CACHE"
  if [ ! -d "$CACHE/rootfs-bookworm/usr" ]; then
    log "debootstrap --variant=minbase bookworm (a few minutes, once)"
    rm -rf "$CACHE/rootfs-bookworm.tmp"
    debootstrap --variant=minbase bookworm "$CACHE/rootfs-bookworm.tmp" http://deb.debian.org/debian >/dev/null
    mv "$CACHE/rootfs-bookworm.tmp" "$CACHE/rootfs-bookworm"
  fi
  tar -C "$CACHE/rootfs-bookworm" -c . | podman import - "$BASE_IMAGE" >/dev/null
fi
log "base image $BASE_IMAGE ready ($(( $(date +%s) - T0 )) s)"

# --- wheel folder: the runtime dependencies only, from this machine's local wheels ---------------
t=$(date +%s)
rm -rf wheels
python3.11 -m pip wheel --quiet --disable-pip-version-check -w wheels . 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
rm -f wheels/dermtriage-*.whl
(cd wheels && sha256sum -- *.whl > SHA256SUMS)
log "wheel folder: $(wc -l < wheels/SHA256SUMS) wheels, $(du -sh wheels | cut -f1) ($(( $(date +%s) - t )) s)"

# --- build ---------------------------------------------------------------------------------------
t=$(date +%s)
VERSION=$(python3.11 -c "import tomllib; print(tomllib.load(open('pyproject.toml', 'rb'))['project']['version'])")
podman build --isolation chroot --network host --format docker \
  --build-arg BASE_IMAGE="$BASE_IMAGE" --build-arg VERSION="$VERSION" \
  --build-arg REVISION="$(git rev-parse HEAD 2>/dev/null || echo unknown)" \
  -t "$IMAGE" -f Dockerfile .
BUILD_S=$(( $(date +%s) - t ))
SIZE=$(podman image inspect "$IMAGE" --format '{{.Size}}')
log "built $IMAGE in $BUILD_S s, $(( SIZE / 1000000 )) MB"
podman history --format '{{.Size}}\t{{.CreatedBy}}' "$IMAGE" | cut -c1-150 | head -20

# --- image checks (no container needed) -----------------------------------------------------------
inspect() { podman image inspect "$IMAGE" --format "$1"; }
[ "$(inspect '{{.Config.User}}')" = "10001:10001" ] || fail "image user is not 10001:10001"
inspect '{{json .Config.Env}}' | grep -q 'DERMTRIAGE_AUTH_DISABLED' && fail "image sets DERMTRIAGE_AUTH_DISABLED"
inspect '{{json .Config.Env}}' | grep -q '"DERMTRIAGE_HOST=0.0.0.0"' || fail "image does not bind 0.0.0.0"
inspect '{{json .Config.Healthcheck}}' | grep -q '/health/ready' || fail "no HEALTHCHECK on /health/ready"
for label in version source licenses revision; do
  v=$(inspect "{{index .Labels \"org.opencontainers.image.$label\"}}")
  [ -n "$v" ] || fail "OCI label org.opencontainers.image.$label missing"
done
[ "$(inspect '{{index .Labels "org.opencontainers.image.licenses"}}')" = "Apache-2.0" ] || fail "licence label"
podman --runtime runc run --rm --no-healthcheck --network none --ulimit nofile=1024:1024 --ulimit nproc=1024:1024 "$IMAGE" \
  python3 -c "
import importlib.util, shutil, sys
dev = [m for m in ('pytest', 'playwright', 'schemathesis', 'ruff', 'hypothesis') if importlib.util.find_spec(m)]
dev += [b for b in ('pytest', 'playwright', 'ruff', 'schemathesis', 'st') if shutil.which(b)]
sys.exit('dev tools in the image: %s' % dev if dev else 0)
" || fail "the image has development tools"

# --- run it ----------------------------------------------------------------------------------------
PORT=$(python3 -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
NAME="dermtriage-ci-$$"
cleanup() {
  podman rm -f -t 5 "$NAME" >/dev/null 2>&1 || true
  podman volume rm -f "$NAME-data" "$NAME-cache" >/dev/null 2>&1 || true
  rm -rf "${WORK:-}"
}
trap cleanup EXIT
WORK=$(mktemp -d)

KEY_JSON=$(podman --runtime runc run --rm --no-healthcheck --network none --ulimit nofile=1024:1024 --ulimit nproc=1024:1024 \
  "$IMAGE" dermtriage create-api-key --name ci --json)
KEY=$(python3 -c "import json, sys; print(json.loads(sys.argv[1])['key'])" "$KEY_JSON")
KEY_LINE=$(python3 -c "import json, sys; print(json.loads(sys.argv[1])['config_line'])" "$KEY_JSON")

# Read-only root filesystem: the container may write only to its volumes and tmpfs (/tmp, /run).
t=$(date +%s.%N)
podman --runtime runc run -d --name "$NAME" --network host \
  --ulimit nofile=1024:1024 --ulimit nproc=1024:1024 --read-only \
  -v "$NAME-data:/var/lib/dermtriage" -v "$NAME-cache:/var/cache/dermtriage" \
  -e DERMTRIAGE_HOST=127.0.0.1 -e DERMTRIAGE_PORT="$PORT" -e DERMTRIAGE_API_KEYS="$KEY_LINE" \
  "$IMAGE" >/dev/null
URL="http://127.0.0.1:$PORT"
ready=""
for _ in $(seq 1 600); do
  if curl -fsS -o /dev/null "$URL/health/ready" 2>/dev/null; then ready=1; break; fi
  [ "$(podman inspect "$NAME" --format '{{.State.Running}}')" = true ] || break
  sleep 0.2
done
if [ -z "$ready" ]; then
  podman logs "$NAME" 2>&1 | tail -40 >&2
  fail "not ready on $URL/health/ready within 120 s"
fi
READY_S=$(python3 -c "import sys, time; print('%.1f' % (time.time() - float(sys.argv[1])))" "$t")
log "ready in $READY_S s (from podman run to /health/ready 200)"

PHOTO=""
for id in $(cut -d, -f25 "$DATA/metadata.csv" | tail -n +2 | head -50); do
  for f in "$DATA/images/$id" "$DATA/images/${id%.*}.jpg" "$DATA/images/${id%.*}.png"; do
    [ -f "$f" ] && { PHOTO=$f; break 2; }
  done
done
[ -n "$PHOTO" ] || fail "no development photo found under $DATA/images"

code=$(curl -sS -o "$WORK/triage.json" -w '%{http_code}' -H "X-API-Key: $KEY" -F "image=@$PHOTO" -F top_k=3 "$URL/v1/triage")
[ "$code" = 200 ] || { cat "$WORK/triage.json" >&2; fail "POST /v1/triage with a key: $code, not 200"; }
python3 - "$WORK/triage.json" <<'EOF' || fail "the triage answer is not the documented JSON"
import json, sys
a = json.load(open(sys.argv[1]))
d = a["differentials"]
assert a["request_id"] and a["model"]["name"] == "embedded-pad-lite0", a.get("model")
assert 1 <= len(d) <= 3 and all(0.0 <= x["probability"] <= 1.0 for x in d), d
assert a["urgency"]["category"], a.get("urgency")
print("container: triage 200:", ", ".join(f"{x['label']} {x['probability']:.2f}" for x in d), "| urgency", a["urgency"]["category"])
EOF
log "photo $(basename "$PHOTO")"

code=$(curl -sS -o /dev/null -w '%{http_code}' -F "image=@$PHOTO" "$URL/v1/triage")
[ "$code" = 401 ] || fail "POST /v1/triage without a key: $code, not 401 (auth must be on by default)"
code=$(curl -sS -o /dev/null -w '%{http_code}' -H "X-API-Key: not-a-key" -F "image=@$PHOTO" "$URL/v1/triage")
[ "$code" = 401 ] || fail "POST /v1/triage with a wrong key: $code, not 401"
log "401 without a key and with a wrong key"

uid=$(podman exec "$NAME" id -u)
puid=$(podman exec "$NAME" awk '/^Uid:/ {print $2}' /proc/1/status)
[ "$uid" != 0 ] && [ "$puid" != 0 ] || fail "the service runs as root (exec uid $uid, pid 1 uid $puid)"
log "service process uid $puid (not root)"

# Code and venv: root-owned, nothing in them writable by the service user.
owner=$(podman exec "$NAME" stat -c '%u' /opt/dermtriage/venv)
[ "$owner" = 0 ] || fail "/opt/dermtriage/venv is owned by uid $owner, not root"
writable=$(podman exec "$NAME" find /opt/dermtriage /usr -writable -print -quit 2>/dev/null || true)
[ -z "$writable" ] || fail "writable by the service user: $writable"
pkg=$(podman exec "$NAME" python3 -c "import importlib.util, os; print(os.path.dirname(importlib.util.find_spec('service').origin))")
if podman exec "$NAME" touch "$pkg/ci-write-test" 2>/dev/null; then fail "the service user can write into $pkg"; fi
log "code and venv root-owned, not writable by the service user ($pkg)"

# The start computed no text embeddings (the package ships them). The optimised runtime's ONNX export
# is made at the first start and kept in the cache volume (README, What touches disk): reported here.
cached=$(podman exec "$NAME" find /var/cache/dermtriage -type f -name 'text-*.pt' -print)
[ -z "$cached" ] || fail "the start wrote text embeddings (not baked into the image): $cached"
exported=$(podman exec "$NAME" find /var/cache/dermtriage -type f -name '*.onnx' -printf '%f ' 2>/dev/null || true)
log "runtime export made at first start, kept in the cache volume: ${exported:-none}"
podman healthcheck run "$NAME" >/dev/null 2>&1 && log "HEALTHCHECK passes" || fail "podman healthcheck run failed"

log "all checks passed; image $(( SIZE / 1000000 )) MB, build $BUILD_S s, ready $READY_S s, step $(( $(date +%s) - T0 )) s in all"
