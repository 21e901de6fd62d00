"""The app of tests/test_delivery_e2e.py: it needs numpy and pandas, so its environment weighs
50-100 MB packed, and it reports where it ran."""


def probe(i, barrier=None, parties=8):
    """``barrier``: a directory on this host; the call waits (up to 5 min) until ``parties``
    calls have arrived there, so that they all run at once, one per single-core worker."""
    import os
    import sys
    import time

    import numpy
    import pandas

    if barrier is not None:
        open(os.path.join(barrier, str(i)), "w").close()
        deadline = time.monotonic() + 300
        while len(os.listdir(barrier)) < parties and time.monotonic() < deadline:
            time.sleep(0.05)

    return (int(numpy.arange(i + 1).sum()), pandas.__name__, sys.prefix,
            os.environ.get("PARSL_PONCHO_WORKER_CACHE"), os.path.isdir("/root/.pyenv/versions"))
