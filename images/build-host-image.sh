#!/usr/bin/env bash
# Build the local host image: Debian with systemd as PID 1.
#
# No image registry is needed: the root filesystem is made with debootstrap
# from a Debian mirror and loaded with `docker import`. The image's tag names
# the Debian suite (celery-kit-host:trixie-1 is Debian 13, "trixie"); the
# default image is local_image in playbooks/group_vars/all/local.yml.
#
# The mirror is taken, in this order, from DEBIAN_MIRROR, or from this
# machine's own apt configuration (deb822 *.sources or a classic
# sources.list line naming a Debian mirror). The image's apt sources list the
# suite, its -updates and its -security suite (from DEBIAN_SECURITY_MIRROR,
# this machine's apt configuration, or the mirror's debian-security sibling),
# so the hosts receive Debian's security updates.
#
# Usage: images/build-host-image.sh [IMAGE]
# Does nothing when the image already exists; FORCE=1 rebuilds it.
set -euo pipefail
cd "$(dirname "$0")/.."

default_image() {
  awk '$1 == "local_image:" { print $2; exit }' playbooks/group_vars/all/local.yml
}
image="${1:-$(default_image)}"
tag="${image##*:}"
suite="${tag%%-*}"
if [ -z "$image" ] || [ "$tag" = "$image" ] || [ -z "$suite" ]; then
  echo "error: the image name must carry the Debian suite in its tag, e.g. celery-kit-host:trixie-1 (got '$image')" >&2
  exit 2
fi

if [ "${FORCE:-0}" != 1 ] && docker image inspect "$image" >/dev/null 2>&1; then
  echo "host image $image is present"
  exit 0
fi

# Every URI of this machine's apt sources, with the suites it serves.
apt_uris() {
  local f
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    awk '
      /^[[:space:]]*$/ { if (uris != "") print uris, suites; uris=""; suites=""; next }
      /^URIs:/ { uris=$2 }
      /^Suites:/ { $1=""; suites=$0 }
      END { if (uris != "") print uris, suites }
    ' "$f"
  done
  { cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null || true; } |
    awk '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) { print $i, $(i+1); break } }'
}

# A Debian mirror serves one of Debian's code names; -security ones are the
# security archive.
debian_suites='(buster|bullseye|bookworm|trixie|forky|sid|stable|testing|unstable)'
mirror="${DEBIAN_MIRROR:-$(apt_uris | grep -E " $debian_suites( |$)" | head -n 1 | cut -d' ' -f1 || true)}"
security="${DEBIAN_SECURITY_MIRROR:-$(apt_uris | grep -E " $debian_suites-security( |$)" | head -n 1 | cut -d' ' -f1 || true)}"
if [ -z "$mirror" ]; then
  echo "error: no Debian mirror found in this machine's apt configuration; set DEBIAN_MIRROR=<url of a Debian mirror>" >&2
  exit 2
fi
security="${security:-${mirror%/debian}/debian-security}"
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
if [ ! -e "/usr/share/debootstrap/scripts/$suite" ]; then
  echo "error: this machine's debootstrap does not know the suite '$suite'; install a newer debootstrap" >&2
  exit 2
fi

work="$(mktemp -d /var/tmp/celery-kit-rootfs.XXXXXX)"
trap 'rm -rf "$work"' EXIT
rootfs="$work/rootfs"

echo "building $image from $mirror ($suite; security updates from $security)"
debootstrap --variant=minbase \
  --include=systemd,systemd-sysv,dbus,python3,python3-apt,iproute2,procps,ca-certificates,sudo,curl,gnupg \
  "$suite" "$rootfs" "$mirror"

# The suite, its updates and its security updates, in deb822 form.
rm -f "$rootfs/etc/apt/sources.list"
cat >"$rootfs/etc/apt/sources.list.d/debian.sources" <<SOURCES
Types: deb
URIs: $mirror
Suites: $suite $suite-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: $security
Suites: $suite-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SOURCES

# Package lists of all three suites, so the first apt run on a host already
# sees the security updates (the roles refresh lists older than an hour).
chroot "$rootfs" apt-get update -qq

# Boot only what a server needs: no consoles, no kernel-only units.
for unit in getty.target console-getty.service systemd-udevd.service \
  systemd-udev-trigger.service systemd-modules-load.service \
  sys-kernel-debug.mount sys-kernel-tracing.mount systemd-remount-fs.service \
  systemd-firstboot.service; do
  ln -sf /dev/null "$rootfs/etc/systemd/system/$unit"
done
echo "$suite-celery-kit-host" >"$rootfs/etc/hostname"
: >"$rootfs/etc/machine-id"
rm -rf "$rootfs"/var/cache/apt/archives/*.deb

tar -C "$rootfs" --numeric-owner -c . |
  docker import \
    --change 'ENV container=docker' \
    --change 'CMD ["/sbin/init"]' \
    --message "celery-kit host: Debian $suite with systemd" \
    - "$image"
echo "host image $image built"
