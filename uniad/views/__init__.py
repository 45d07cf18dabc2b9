"""What people see: the training dashboard's view of a run (``dashboard``), computed from the run's artifacts."""
