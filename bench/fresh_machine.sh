#!/usr/bin/env bash
# Figures, not assertions: how long the README's two commands take on a fresh Debian 12 machine.
#
#   bench/fresh_machine.sh [--rev REV] [--only quickstart|test-setup] [--preinstall "PKG ..."]
#
# For each command, a fresh root file system: `debootstrap --variant=minbase bookworm`, cached as a
# tarball like scripts/build_image.sh does ($HOSTSTORAGE_CI_CACHE, default /var/cache/hoststorage-ci,
# bookworm-minbase.tar; delete it to refresh), unpacked under /var/tmp with the checkout's REV (default
# HEAD; e.g. main for the "before" figure) in /src. The machine's apt sources and settings, DNS and CA
# certificates are copied in, and the variables pip reads (PIP_*, SSL_CERT_FILE, ...) passed on: what a
# fresh machine of this workplace has. Then, as root in a chroot:
#   quickstart  `bash scripts/quickstart.sh` until it has printed the status table (wall time, and the
#               lines it printed, to check that it is quiet);
#   test-setup  `bash scripts/setup.sh`: what `scripts/test.sh` installs before it runs the suite (the
#               suite itself needs this machine's daemons and is timed where it runs).
# The chroot runs in its own mount namespace (unshare --mount): /proc, /sys and a /dev of its own (a
# tmpfs with the device nodes the quickstart needs, so the quickstart's /dev link never touches this
# machine's /dev) and every mount made inside vanish with it, also on failure. Loop devices attached
# inside are detached, then the root is removed, refusing if anything is still mounted below it.
# --preinstall installs Debian packages in the fresh root before the clock starts: e.g. nodejs, which this
# workplace's machines come with and the set-up before the Node-free kubectl install needed.
# Run as root, alone on the machine for honest times (flock /tmp/hs-heavy.lock bench/fresh_machine.sh).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
rev=HEAD
only=""
preinstall=""
while [ $# -gt 0 ]; do
  case "$1" in
    --rev) rev=$2; shift 2 ;;
    --only) only=$2; shift 2 ;;
    --preinstall) preinstall=$2; shift 2 ;;
    *) echo "usage: $0 [--rev REV] [--only quickstart|test-setup] [--preinstall PKGS]" >&2; exit 2 ;;
  esac
done
[ "$(id -u)" = 0 ] || { echo "fresh_machine: run as root" >&2; exit 2; }
commit=$(git -C "$here" rev-parse --short "$rev")

cache=${HOSTSTORAGE_CI_CACHE:-/var/cache/hoststorage-ci}
tarball=$cache/bookworm-minbase.tar
mkdir -p "$cache"
if [ ! -s "$tarball" ]; then
  rootfs=$(mktemp -d "$cache/rootfs.XXXXXX")
  echo "fresh_machine: debootstrap --variant=minbase bookworm (cached in $tarball)" >&2
  debootstrap --variant=minbase bookworm "$rootfs" http://deb.debian.org/debian >/dev/null
  tar -C "$rootfs" --numeric-owner -cf "$tarball.tmp" .
  mv "$tarball.tmp" "$tarball"
  rm -rf --one-file-system "$rootfs"
fi

root=""
cleanup() {
  [ -n "$root" ] && [ -d "$root" ] || return 0
  # Loop devices the run attached (their backing files live below the root).
  losetup -ln -O NAME,BACK-FILE 2>/dev/null | while read -r dev file; do
    case "$file" in "$root"/*) losetup -d "$dev" || true ;; esac
  done
  if grep -q " $root[/ ]" /proc/self/mountinfo; then
    echo "fresh_machine: something is still mounted below $root; left in place" >&2
    return 1
  fi
  rm -rf --one-file-system "$root"
}
trap cleanup EXIT

# Inside the namespace: the file systems of the chroot, then the command, timed.
inner() {
  set -eu
  local root=$1 what=$2 preinstall=$3
  mount -t proc proc "$root/proc"
  mount --rbind /sys "$root/sys"
  mount -t tmpfs -o mode=755 dev "$root/dev"
  mknod -m 666 "$root/dev/null" c 1 3; mknod -m 666 "$root/dev/zero" c 1 5
  mknod -m 666 "$root/dev/full" c 1 7; mknod -m 666 "$root/dev/random" c 1 8
  mknod -m 666 "$root/dev/urandom" c 1 9; mknod -m 666 "$root/dev/tty" c 5 0
  mknod -m 660 "$root/dev/loop-control" c 10 237
  for n in $(seq 0 127); do mknod -m 660 "$root/dev/loop$n" b 7 "$n"; done
  mkdir -p "$root/dev/pts" "$root/dev/shm"
  mount -t devpts -o newinstance,ptmxmode=0666 devpts "$root/dev/pts"
  ln -s pts/ptmx "$root/dev/ptmx"
  mount -t tmpfs shm "$root/dev/shm"
  ln -s /proc/self/fd "$root/dev/fd"
  local env=(HOME=/root LANG=C.UTF-8 TERM=dumb PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin)
  local var
  for var in $(compgen -e); do
    case "$var" in PIP_FIND_LINKS) ;; PIP_*|SSL_CERT_*|REQUESTS_CA_BUNDLE|CURL_CA_BUNDLE) env+=("$var=${!var}") ;; esac
  done
  if [ -n "$preinstall" ]; then
    # shellcheck disable=SC2086 # a list of package names
    chroot "$root" /usr/bin/env -i "${env[@]}" DEBIAN_FRONTEND=noninteractive bash -c \
      "apt-get update -qq && apt-get install -y -qq --no-install-recommends $preinstall && apt-get clean" \
      >"$root/preinstall.log" 2>&1 || { cat "$root/preinstall.log" >&2; return 1; }
    rm -rf "$root"/var/lib/apt/lists/*
  fi
  local script=scripts/quickstart.sh
  [ "$what" = test-setup ] && script=scripts/setup.sh
  local start end rc=0
  start=$(date +%s%N)
  chroot "$root" /usr/bin/env -i "${env[@]}" bash -c "cd /src && bash $script" >"$root/run.log" 2>&1 || rc=$?
  end=$(date +%s%N)
  local ms=$(((end - start) / 1000000))
  echo "$rc $((ms / 1000)).$(printf '%03d' $((ms % 1000)))"
}

run() {
  local what=$1
  root=$(mktemp -d /var/tmp/hs-fresh.XXXXXX)
  tar -C "$root" -xf "$tarball"
  # A machine's / is 0755; mktemp's 0700 (also the tarball's own ./, from its mktemp) would make
  # hoststorage's qemu access check fail for a user that is not root.
  chmod 755 "$root"
  mkdir -p "$root/src"
  git -C "$here" archive "$rev" | tar -C "$root/src" -x
  cp -L /etc/resolv.conf "$root/etc/resolv.conf"
  # This machine's apt sources replace debootstrap's (one list, the same mirror and suites).
  rm -f "$root/etc/apt/sources.list"
  cp -a /etc/apt/sources.list.d/. "$root/etc/apt/sources.list.d/" 2>/dev/null || true
  if [ -f /etc/apt/sources.list ]; then cp /etc/apt/sources.list "$root/etc/apt/sources.list"; fi
  cp -a /etc/apt/apt.conf.d/. "$root/etc/apt/apt.conf.d/"
  if [ -f /etc/pip.conf ]; then cp /etc/pip.conf "$root/etc/pip.conf"; fi
  mkdir -p "$root/etc/ssl/certs" "$root/usr/local/share/ca-certificates"
  cp -a /usr/local/share/ca-certificates/. "$root/usr/local/share/ca-certificates/" 2>/dev/null || true
  cp -L /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt" 2>/dev/null || true
  local result rc seconds
  result=$(unshare --mount --propagation private bash -c "$(declare -f inner); inner '$root' '$what' '$preinstall'")
  read -r rc seconds <<<"$result"
  local lines
  lines=$(grep -c '' "$root/run.log" || true)
  printf '%-11s rev %s%s: %6.1f s, exit %s, %s lines of output\n' "$what" "$commit" "${preinstall:+ (+$preinstall)}" "$seconds" "$rc" "$lines"
  sed 's/^/    | /' "$root/run.log"
  cleanup
  root=""
}

for what in quickstart test-setup; do
  if [ -z "$only" ] || [ "$only" = "$what" ]; then run "$what"; fi
done
