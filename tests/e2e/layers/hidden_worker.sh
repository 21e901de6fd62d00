#!/bin/sh
# Start work_queue_worker with the submit host's Python (/root/.pyenv), the project checkout
# (/work/main) and the workflow's own directory ($HIDE_DIR) hidden behind empty tmpfs mounts, so
# tasks can only use the shipped base environment and code layer.
# Arguments are passed to work_queue_worker unchanged.
[ -n "${HIDE_DIR:-}" ] && [ -d "$HIDE_DIR" ] || { echo "hidden_worker.sh: set HIDE_DIR" >&2; exit 2; }
exec unshare --mount sh -c '
    mount -t tmpfs tmpfs /root/.pyenv &&
    mount -t tmpfs tmpfs /work/main &&
    mount -t tmpfs tmpfs "$HIDE_DIR" &&
    exec /usr/bin/work_queue_worker "$@"' hidden-worker "$@"
