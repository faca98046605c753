#!/usr/bin/env bash
# Builds the local base image ${1:-scanflow-base:bookworm} when it is missing: no registry is reachable here, so
# `debootstrap --variant=minbase bookworm` makes a Debian root file system and `docker import` turns it into an
# image (~1 min). Users with Docker Hub access skip this and build FROM python:3.11-slim.
set -euo pipefail
IMAGE="${1:-scanflow-base:bookworm}"
if docker image inspect "$IMAGE" >/dev/null 2>&1; then exit 0; fi
command -v debootstrap >/dev/null || { echo "scanflow: debootstrap is missing (apt-get install debootstrap)" >&2; exit 1; }
ROOTFS="$(mktemp -d)"
trap 'rm -rf "$ROOTFS"' EXIT
debootstrap --variant=minbase bookworm "$ROOTFS" >/dev/null
tar -C "$ROOTFS" -c . | docker import - "$IMAGE" >/dev/null
echo "scanflow: built $IMAGE"
