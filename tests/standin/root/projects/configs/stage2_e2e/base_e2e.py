_base_ = ["../_base_/datasets/nus-3d.py", "../_base_/default_runtime.py"]

plugin = True
plugin_dir = "projects/mmdet3d_plugin/"
queue_length = 3
planning_evaluation_strategy = "uniad"  # uniad or stp3
model = dict(
    type="UniAD",
    gt_iou_threshold=0.3,
    queue_length=queue_length,
    use_grid_mask=True,
    freeze_img_backbone=True,
    motion_head=dict(
        type="MotionHead", anchor_info_path="data/others/motion_anchor_infos_mode6.pkl", predict_steps=12, num_anchor=6
    ),
    occ_head=dict(type="OccHead", n_future=4),
    planning_head=dict(type="PlanningHeadSingleMode", planning_steps=6),
)
dataset_type = "NuScenesE2EDataset"
data_root = "data/nuscenes/"
info_root = "data/infos/"
ann_file_train = info_root + "nuscenes_infos_temporal_train.pkl"
ann_file_val = info_root + "nuscenes_infos_temporal_val.pkl"
ann_file_test = info_root + "nuscenes_infos_temporal_val.pkl"
data = dict(
    samples_per_gpu=1,
    workers_per_gpu=8,
    train=dict(type=dataset_type, data_root=data_root, ann_file=ann_file_train, queue_length=queue_length),
    val=dict(type=dataset_type, data_root=data_root, ann_file=ann_file_val, samples_per_gpu=1),
    test=dict(type=dataset_type, data_root=data_root, ann_file=ann_file_test),
)
optimizer = dict(
    type="AdamW", lr=2e-4, paramwise_cfg=dict(custom_keys={"img_backbone": dict(lr_mult=0.1)}), weight_decay=0.01
)
optimizer_config = dict(grad_clip=dict(max_norm=35, norm_type=2))
lr_config = dict(policy="CosineAnnealing", warmup="linear", warmup_iters=500, warmup_ratio=1.0 / 3, min_lr_ratio=1e-3)
total_epochs = 20
evaluation = dict(
    interval=4,
    pipeline=[dict(type="LoadMultiViewImageFromFilesInCeph")],
    planning_evaluation_strategy=planning_evaluation_strategy,
)
runner = dict(type="EpochBasedRunner", max_epochs=total_epochs)
log_config = dict(interval=10, hooks=[dict(type="TextLoggerHook"), dict(type="TensorboardLoggerHook")])
checkpoint_config = dict(interval=1)
load_from = "ckpts/uniad_base_track_map.pth"
find_unused_parameters = True
