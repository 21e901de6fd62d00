#!/bin/sh
# Stands in for work_queue_worker when no worker can take a task yet (no free node, a node that
# cannot reach the manager): started with the worker's arguments, it never connects.
exec sleep 3600
