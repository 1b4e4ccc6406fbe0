"""Prices, usage → cost, the ledger and budgets.

Money is `Decimal` everywhere (stored as integer pico-dollars so SQLite sums stay exact); an
unknown price is an error, never a silent $0.
"""
