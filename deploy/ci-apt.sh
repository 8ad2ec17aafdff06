#!/usr/bin/env bash
# The Debian packages the container tests need (tests/test_containers.py): rootful podman
# serving the Docker API, docker-compose v1 as its client, debootstrap for the base image.
# Idempotent: installs only when a tool is missing. Run as root, or with sudo available.
#  - --no-install-recommends: docker-compose recommends docker.io (containerd, apparmor, ...)
#    and podman recommends crun, CNI plugins and rootless helpers; none of them is used.
#  - runc: crun 1.8 refuses hybrid cgroup v1/v2 hosts (deploy/podman/containers.conf).
#  - netavark + aardvark-dns: bridge networks and service-name DNS; iptables: netavark's NAT.
set -euo pipefail

packages=(podman runc netavark aardvark-dns iptables docker-compose debootstrap)
missing=0
for tool in podman docker-compose debootstrap runc iptables; do
    command -v "$tool" >/dev/null 2>&1 || missing=1
done
for helper in /usr/lib/podman/netavark /usr/lib/podman/aardvark-dns; do
    [ -x "$helper" ] || missing=1
done
if [ "$missing" = 0 ]; then
    echo "ci-apt: podman, docker-compose and debootstrap are installed"
    exit 0
fi

sudo=()
if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null 2>&1 || { echo "ci-apt: need root or sudo" >&2; exit 1; }
    sudo=(sudo)
fi
export DEBIAN_FRONTEND=noninteractive
timeout 600 "${sudo[@]}" apt-get update -qq
timeout 1200 "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq --no-install-recommends "${packages[@]}"
echo "ci-apt: installed ${packages[*]}"
