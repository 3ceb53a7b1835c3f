"""Promotion gates and the live pointer (design section 3.5)."""
