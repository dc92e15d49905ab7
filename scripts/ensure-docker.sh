#!/usr/bin/env bash
# Make sure a Docker engine answers. Where none does and we are root on a
# Debian-family machine, install the distribution's engine (docker.io) and
# start it; otherwise stop with a message naming what to install.
set -euo pipefail

engine_answers() { docker info >/dev/null 2>&1; }

if command -v docker >/dev/null && engine_answers; then
  exit 0
fi

if [ "$(id -u)" != 0 ] || [ ! -f /etc/debian_version ]; then
  echo "error: no Docker engine answers. Install Docker Engine (Debian/Ubuntu: apt-get install docker.io)," >&2
  echo "start it, and make sure this user may use it (e.g. member of the docker group)." >&2
  exit 2
fi

if ! command -v dockerd >/dev/null; then
  echo "installing the distribution's Docker engine (docker.io)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq docker.io >/dev/null
fi

echo "starting the Docker engine"
if [ -d /run/systemd/system ]; then
  systemctl start docker
else
  # No systemd as PID 1 (a container or CI sandbox): run the daemon directly,
  # after clearing the pid file a killed daemon may have left behind.
  if [ -f /var/run/docker.pid ] && ! kill -0 "$(cat /var/run/docker.pid)" 2>/dev/null; then
    rm -f /var/run/docker.pid
  fi
  mkdir -p /var/log
  # In its own session: it outlives the shell (and process group) that started it.
  setsid nohup dockerd >/var/log/dockerd.log 2>&1 &
fi

for _ in $(seq 1 60); do
  if engine_answers; then
    echo "Docker engine is up"
    exit 0
  fi
  sleep 1
done
echo "error: the Docker engine did not start; see /var/log/dockerd.log or 'journalctl -u docker'" >&2
exit 2
