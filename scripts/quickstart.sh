#!/usr/bin/env bash
# The quickstart demo, as root on Debian 12: the minimal set-up (scripts/setup.sh --minimal: python3,
# Debian's libvirt binding and hoststorage in .venv; idempotent), then an ext4 image on a loop device and
# a local directory under /var/lib/hoststorage-quickstart, then `hoststorage apply` of
# examples/quickstart.yaml (a posixfs and a localfs StorageConnection) and the status table.
#
# Idempotent: a second run reuses the image (never reformats it), reuses the loop device already
# attached to it, and apply reports "no change". The YAML names the device through the fixed link
# /dev/hoststorage-quickstart, which this script points at the loop device of the day.
# Undo: hoststorage --state-dir $QS/state delete -f examples/quickstart.yaml; losetup -d /dev/loopN.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${HOSTSTORAGE_VENV:-$here/.venv}
qs=/var/lib/hoststorage-quickstart
image=$qs/disk.img
link=/dev/hoststorage-quickstart

bash "$here/scripts/setup.sh" --minimal

mkdir -p "$qs/shared"
if [ ! -f "$image" ]; then
  truncate -s 256M "$image.tmp"
  mkfs.ext4 -q -F -L hs-quickstart "$image.tmp"
  mv "$image.tmp" "$image"
  echo "quickstart: made $image (ext4, 256 MiB sparse)"
fi
dev=$(losetup -j "$image" -O NAME --noheadings | head -n1 | tr -d ' ')
if [ -z "$dev" ]; then
  dev=$(losetup --find --show "$image")
  echo "quickstart: attached $image to $dev"
fi
if [ "$(readlink "$link" 2>/dev/null || true)" != "$dev" ]; then
  ln -sfn "$dev" "$link"
  echo "quickstart: $link -> $dev"
fi

hs=("$venv/bin/hoststorage" --state-dir "$qs/state" --allowed-host-path "$qs")
rc=0
"${hs[@]}" apply -f "$here/examples/quickstart.yaml" || rc=$?
echo
echo "quickstart: status (hoststorage --state-dir $qs/state status):"
"${hs[@]}" status || true
exit "$rc"
