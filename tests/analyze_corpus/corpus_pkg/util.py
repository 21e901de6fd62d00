"""Stdlib-only helper of the local package."""

import json


def label(obj):
    """JSON label."""
    return json.dumps(str(obj))
