"""Pure building blocks shared by every model family (no registry, no data, no engine)."""
