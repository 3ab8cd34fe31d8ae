"""training package (repository-level; not shipped to the Hub)."""
