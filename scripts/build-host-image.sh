#!/usr/bin/env bash
# Build the local host image: Debian 12 with systemd as PID 1.
#
# No image registry is needed: the root filesystem is made with debootstrap
# from a Debian mirror and loaded with `docker import`. The mirror is taken,
# in this order, from DEBIAN_MIRROR, or from this machine's own apt
# configuration (deb822 *.sources or a classic sources.list line).
#
# Usage: scripts/build-host-image.sh [IMAGE]   (default: $KIT_HOST_IMAGE)
# Does nothing when the image already exists; FORCE=1 rebuilds it.
set -euo pipefail

image="${1:-${KIT_HOST_IMAGE:-celery-kit-host:bookworm-1}}"
suite="${DEBIAN_SUITE:-bookworm}"

if [ "${FORCE:-0}" != 1 ] && docker image inspect "$image" >/dev/null 2>&1; then
  echo "host image $image is present"
  exit 0
fi

find_mirror() {
  # deb822 format: the URIs line of a stanza that lists the suite.
  local f
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    awk -v suite="$suite" '
      /^[[:space:]]*$/ { if (uris != "" && has) { print uris; exit } uris=""; has=0; next }
      /^URIs:/ { uris=$2 }
      /^Suites:/ { for (i = 2; i <= NF; i++) if ($i == suite) has=1 }
      END { if (uris != "" && has) print uris }
    ' "$f" | { grep -v -- '-security' || true; } | head -n 1
  done
  # classic one-line format
  { cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null || true; } |
    awk -v suite="$suite" '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i == suite) { u=$(i-1); print u; exit } }' |
    { grep -v -- '-security' || true; } | head -n 1
}

mirror="${DEBIAN_MIRROR:-}"
if [ -z "$mirror" ]; then
  mirror="$(find_mirror | head -n 1)"
fi
if [ -z "$mirror" ]; then
  echo "error: no Debian mirror found in this machine's apt configuration; set DEBIAN_MIRROR=<url of a Debian mirror>" >&2
  exit 2
fi
if [ "$(id -u)" != 0 ]; then
  echo "error: building the host image needs root (debootstrap); run: sudo $0 $image" >&2
  exit 2
fi
if ! command -v debootstrap >/dev/null; then
  if [ -f /etc/debian_version ]; then
    echo "installing debootstrap"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null ||
      { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null; }
  else
    echo "error: debootstrap is not installed; install it with your distribution's package manager" >&2
    exit 2
  fi
fi

work="$(mktemp -d /var/tmp/celery-kit-rootfs.XXXXXX)"
trap 'rm -rf "$work"' EXIT
rootfs="$work/rootfs"

echo "building $image from $mirror ($suite)"
debootstrap --variant=minbase \
  --include=systemd,systemd-sysv,dbus,python3,python3-apt,iproute2,procps,ca-certificates,sudo,curl,gnupg \
  "$suite" "$rootfs" "$mirror"

# Boot only what a server needs: no consoles, no kernel-only units.
for unit in getty.target console-getty.service systemd-udevd.service \
  systemd-udev-trigger.service systemd-modules-load.service \
  sys-kernel-debug.mount sys-kernel-tracing.mount systemd-remount-fs.service \
  systemd-firstboot.service; do
  ln -sf /dev/null "$rootfs/etc/systemd/system/$unit"
done
echo "$suite-celery-kit-host" >"$rootfs/etc/hostname"
: >"$rootfs/etc/machine-id"
# Package lists stay: the roles refresh them when they are older than an hour.
rm -rf "$rootfs"/var/cache/apt/archives/*.deb

tar -C "$rootfs" --numeric-owner -c . |
  docker import \
    --change 'ENV container=docker' \
    --change 'CMD ["/sbin/init"]' \
    --message "celery-kit host: Debian $suite with systemd" \
    - "$image"
echo "host image $image built"
