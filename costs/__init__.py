"""Prices, usage → cost, the ledger and budgets (not built yet: see the open issues)."""
