#!/bin/sh
# Start work_queue_worker with the submit host's Python (/root/.pyenv) and the project checkout
# (/work/main) hidden behind empty tmpfs mounts, so tasks can only use the shipped environment.
# Arguments are passed to work_queue_worker unchanged.
exec unshare --mount sh -c '
    mount -t tmpfs tmpfs /root/.pyenv &&
    mount -t tmpfs tmpfs /work/main &&
    exec /usr/bin/work_queue_worker "$@"' hidden-worker "$@"
