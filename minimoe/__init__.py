"""minimoe."""
