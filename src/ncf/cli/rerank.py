"""`ncf rerank` commands (see the module that implements them)."""
