"""Training: parameter groups and schedules, EMA, the per-epoch engine and the run driver."""
