"""The ``ctxledger`` command line: ``cli`` parses, calls the ledger and renders.

Backends import ``ledger`` (and ``projections``); nothing here is an API for them.
"""
