"""`ncf items` commands (see the module that implements them)."""
