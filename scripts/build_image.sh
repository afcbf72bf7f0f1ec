#!/usr/bin/env bash
# Build the hoststorage image with podman (rootful, chroot isolation: no nested container runtime needed).
#
#   scripts/build_image.sh [--tag IMAGE] [--base IMAGE | --debootstrap-base]
#
# --tag               the image to produce (default localhost/hoststorage:<version from pyproject.toml>)
# --base IMAGE        BASE_IMAGE for the Dockerfile (default: the Dockerfile's, debian:bookworm-slim)
# --debootstrap-base  build on a local Debian 12 base made with `debootstrap --variant=minbase bookworm`,
#                     no registry needed. The rootfs tarball is cached in $HOSTSTORAGE_CI_CACHE
#                     (default /var/cache/hoststorage-ci) and imported once as
#                     localhost/hoststorage-ci-base:bookworm; delete the tarball to refresh it.
#
# Behind a TLS-intercepting proxy set HOSTSTORAGE_BUILD_CA to a CA bundle file; pip in the build uses it
# (a build secret: mounted for the pip step only, never stored in a layer). When unset, PIP_CERT is used if it
# names a file. Prints the image name on the last line of stdout.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$here/pyproject.toml" | head -n1)
tag="localhost/hoststorage:${version}"
base=""
debootstrap_base=0
while [ $# -gt 0 ]; do
  case "$1" in
    --tag) tag=$2; shift 2 ;;
    --base) base=$2; shift 2 ;;
    --debootstrap-base) debootstrap_base=1; shift ;;
    *) echo "usage: $0 [--tag IMAGE] [--base IMAGE | --debootstrap-base]" >&2; exit 2 ;;
  esac
done

if [ $debootstrap_base -eq 1 ]; then
  cache=${HOSTSTORAGE_CI_CACHE:-/var/cache/hoststorage-ci}
  base=localhost/hoststorage-ci-base:bookworm
  tarball=$cache/bookworm-minbase.tar
  mkdir -p "$cache"
  if [ ! -s "$tarball" ]; then
    rootfs=$(mktemp -d "$cache/rootfs.XXXXXX")
    trap 'rm -rf "$rootfs"' EXIT
    echo "build_image: debootstrap --variant=minbase bookworm (cached in $tarball)" >&2
    debootstrap --variant=minbase bookworm "$rootfs" http://deb.debian.org/debian >&2
    tar -C "$rootfs" --numeric-owner -cf "$tarball.tmp" .
    mv "$tarball.tmp" "$tarball"
    rm -rf "$rootfs"
    trap - EXIT
    podman rmi -f "$base" >/dev/null 2>&1 || true
  fi
  if ! podman image exists "$base"; then
    podman import --quiet "$tarball" "$base" >&2
  fi
fi

ca=${HOSTSTORAGE_BUILD_CA:-}
if [ -z "$ca" ] && [ -n "${PIP_CERT:-}" ] && [ -f "${PIP_CERT}" ]; then ca=$PIP_CERT; fi
ca_args=()
if [ -n "$ca" ]; then
  ca_args=(--secret "id=build-ca,src=$ca")
fi
base_args=()
if [ -n "$base" ]; then base_args=(--build-arg "BASE_IMAGE=$base"); fi

# --isolation chroot: runs RUN steps without a nested OCI runtime or cgroup setup (works in CI
# containers); --network host: the build's apt and pip reach the registries like the host does.
podman build --isolation chroot --network host --layers \
  --build-arg "VERSION=$version" "${base_args[@]}" "${ca_args[@]}" \
  --tag "$tag" --file "$here/Dockerfile" "$here" >&2
echo "$tag"
