"""Operations an operator runs: the control plane, replay, reconcile, DLQ redrive and jobs."""
