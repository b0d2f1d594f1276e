"""``python -m ctxledger``: the same command as the ``ctxledger`` script."""

from ctxledger.entry import main

main()
