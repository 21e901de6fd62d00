"""The app of tests/test_delivery_e2e.py: it needs numpy and pandas, so its environment weighs
50-100 MB packed, and it reports where it ran."""


def probe(i):
    import os
    import sys

    import numpy
    import pandas

    return (int(numpy.arange(i + 1).sum()), pandas.__name__, sys.prefix,
            os.environ.get("PARSL_PONCHO_WORKER_CACHE"), os.path.isdir("/root/.pyenv/versions"))
