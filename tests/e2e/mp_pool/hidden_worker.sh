#!/bin/sh
# Start work_queue_worker with the submit host's Python (/root/.pyenv) and this checkout (the
# directory three levels up, wherever it is: /work/main or a worktree) hidden behind empty tmpfs
# mounts, so tasks can only use the shipped environment. Arguments go to work_queue_worker.
checkout=$(cd "$(dirname "$0")/../../.." && pwd)
exec unshare --mount sh -c '
    mount -t tmpfs tmpfs /root/.pyenv &&
    mount -t tmpfs tmpfs "$0" &&
    exec /usr/bin/work_queue_worker "$@"' "$checkout" "$@"
