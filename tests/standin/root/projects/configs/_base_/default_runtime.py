checkpoint_config = dict(interval=1)
log_config = dict(interval=10, hooks=[dict(type="TextLoggerHook"), dict(type="TensorboardLoggerHook")])
dist_params = dict(backend="nccl")
log_level = "INFO"
work_dir = None
load_from = None
resume_from = None
workflow = [("train", 1)]
