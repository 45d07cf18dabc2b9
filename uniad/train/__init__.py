"""Training a stage: the launch spec and argv (``launch``), the worker's GPUs and NCCL (``probes``), the process
group and its live health watch (``process``), progress and ETA (``progress``), and where a retry resumes
(``resume``)."""
