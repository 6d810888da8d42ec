#!/usr/bin/env bash
# Install wrk and nginx with apt-get when they are missing (as root), or say what is missing.
need=()
command -v wrk >/dev/null 2>&1 || need+=(wrk)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need+=(nginx)
[ "${#need[@]}" -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq && apt-get install -y -qq "${need[@]}" && exit 0
fi
echo "bench: please install ${need[*]} (the benches that need them will be skipped)" >&2
