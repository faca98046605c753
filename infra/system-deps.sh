#!/usr/bin/env bash
# Installs the Debian packages named as arguments when they are missing and this user can (root + apt-get).
# Idempotent. Otherwise it says what is missing and how to install it, and exits 0 so callers fall back
# (e.g. the bundled scikit-learn digits instead of Fashion-MNIST).
set -u
missing=()
for package in "$@"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "scanflow: installing Debian packages: ${missing[*]}"
  if apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null; then
    exit 0
  fi
  echo "scanflow: apt-get could not install ${missing[*]}" >&2
fi
echo "scanflow: missing Debian packages: ${missing[*]} (install them with: sudo apt-get install ${missing[*]}); continuing without them" >&2
exit 0
