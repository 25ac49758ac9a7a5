#!/usr/bin/env bash
# Builds the fogmesh OCI image from packaging/Containerfile with podman (no daemon).
#
#   packaging/container.sh [--binary PATH] [--tag TAG] [--base IMAGE | --debootstrap]
#
# --binary    the fogmesh binary to put in (default: cargo build --release --locked, then
#             target/release/fogmesh)
# --tag       the image's name (default fogmesh:latest)
# --base      the base image (default docker.io/library/debian:bookworm-slim)
# --debootstrap
#             make the base here from Debian's packages instead of pulling one (mmdebstrap,
#             minbase bookworm, imported as localhost/fogmesh-base:bookworm and reused): for hosts
#             that reach Debian's mirrors but no image registry. The base is made once and kept:
#             `podman rmi localhost/fogmesh-base:bookworm` to make it again with Debian's updates
set -euo pipefail

binary="" tag="fogmesh:latest" base="docker.io/library/debian:bookworm-slim" debootstrap=0
while [ $# -gt 0 ]; do
  case "$1" in
    --binary) binary="$2"; shift 2 ;;
    --tag) tag="$2"; shift 2 ;;
    --base) base="$2"; shift 2 ;;
    --debootstrap) debootstrap=1; shift ;;
    *) echo "usage: packaging/container.sh [--binary PATH] [--tag TAG] [--base IMAGE | --debootstrap]" >&2; exit 2 ;;
  esac
done
command -v podman >/dev/null || { echo "podman is required (Debian package podman)" >&2; exit 1; }
# A --binary path is the caller's; everything else is the repository's.
if [ -n "$binary" ]; then binary=$(realpath "$binary"); fi
cd "$(dirname "$0")/.."

context=$(mktemp -d)
rootfs=""
trap 'rm -rf "$context" ${rootfs:+"$rootfs"}' EXIT

if [ -z "$binary" ]; then
  cargo build --release --locked -p fogmesh-node
  binary="${CARGO_TARGET_DIR:-target}/release/fogmesh"
fi
[ -x "$binary" ] || { echo "$binary: not an executable" >&2; exit 1; }

if [ "$debootstrap" = 1 ]; then
  base=localhost/fogmesh-base:bookworm
  if ! podman image exists "$base"; then
    command -v mmdebstrap >/dev/null || { echo "--debootstrap needs mmdebstrap (Debian package mmdebstrap)" >&2; exit 1; }
    rootfs=$(mktemp --suffix=.tar)
    mmdebstrap --quiet --variant=minbase bookworm "$rootfs"
    podman import --quiet "$rootfs" "$base" >/dev/null
  fi
fi

cp "$binary" "$context/fogmesh"
cp packaging/Containerfile "$context/Containerfile"
mkdir "$context/home"
podman build --quiet --build-arg "BASE=$base" --tag "$tag" "$context" >/dev/null
echo "built $tag (base $base, binary $binary)"
