#!/bin/sh
# Start work_queue_worker as on another node: the submit host's Python (/root/.pyenv) and this
# checkout (three levels up, wherever it is) hidden behind empty tmpfs mounts, and a /dev/shm of
# its own (an empty tmpfs), so tasks see neither the host's Python nor the driver's shared-memory
# files. Arguments go to work_queue_worker.
checkout=$(cd "$(dirname "$0")/../../.." && pwd)
# shellcheck disable=SC2016 # the inner sh expands them
exec unshare --mount sh -c '
    mount -t tmpfs tmpfs /root/.pyenv &&
    mount -t tmpfs tmpfs "$0" &&
    mount -t tmpfs tmpfs /dev/shm &&
    exec /usr/bin/work_queue_worker "$@"' "$checkout" "$@"
