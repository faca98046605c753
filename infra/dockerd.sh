#!/usr/bin/env bash
# Starts a Docker daemon for the container tests when none answers: no bridge network, so containers use the
# host's network (network_mode: host) and every connection stays on 127.0.0.1. Logs in ${DOCKERD_LOG:-/tmp/dockerd.log}.
# Needs root and Debian's docker.io (infra/system-deps.sh docker.io installs it).
set -euo pipefail
if docker info >/dev/null 2>&1; then exit 0; fi
command -v dockerd >/dev/null || { echo "scanflow: dockerd is missing (apt-get install docker.io)" >&2; exit 1; }
nohup dockerd --bridge=none --iptables=false --ip6tables=false >"${DOCKERD_LOG:-/tmp/dockerd.log}" 2>&1 &
for _ in $(seq 60); do
  docker info >/dev/null 2>&1 && exit 0
  sleep 1
done
echo "scanflow: dockerd did not answer within 60 s; see ${DOCKERD_LOG:-/tmp/dockerd.log}" >&2
exit 1
