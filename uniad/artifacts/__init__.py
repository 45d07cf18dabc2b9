"""What training leaves behind: checkpoints inspected safely (``checkpoints``), published atomically with provenance
(``publish``), and copied to and from S3 (``storage``)."""
