"""Training health: read the logs (``logs``), watch a stage live (``monitor``), analyse a finished or running
stage (``analysis``, with the config facts of ``schedule``), write its report (``report``), and gate on it
(``gate``). ``reference`` rebuilds the reference run's curve for tests and benchmarks."""
