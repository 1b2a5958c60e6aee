"""`ncf compare` commands (see the module that implements them)."""
