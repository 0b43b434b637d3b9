"""``exchange-stream <command>``: the worker and every operation, from the shell."""
