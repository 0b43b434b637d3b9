"""Pure domain code: no I/O."""
