"""Reliability and security suite: faults, load, bad input, attacks (see conftest.py)."""
