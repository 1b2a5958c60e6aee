"""`ncf serve` commands (see the module that implements them)."""
