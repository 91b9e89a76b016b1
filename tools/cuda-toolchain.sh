#!/usr/bin/env bash
# Installs the nvcc that `make kernels` is pinned to: Debian 12's
# nvidia-cuda-toolkit 11.8 (from contrib and non-free, added here with the
# same mirror as the system's sources). No GPU is needed to build kernels.
set -euo pipefail
want=11.8.89~11.8.0-5~deb12u1
if ! apt-cache policy nvidia-cuda-toolkit 2>/dev/null | grep -q "$want"; then
	uri=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
	cat >/etc/apt/sources.list.d/kvd-nonfree.sources <<SRC
Types: deb
URIs: ${uri:-http://deb.debian.org/debian}
Suites: bookworm bookworm-updates
Components: contrib non-free
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
	apt-get update -qq
fi
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "nvidia-cuda-toolkit=$want"
nvcc --version | tail -2
