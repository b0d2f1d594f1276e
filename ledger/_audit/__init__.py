"""The auditor's reads: history by period and as of an instant, the chain,
verification and exports."""
