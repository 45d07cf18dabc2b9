# Mini UniAD stage 2: end to end, adding motion, occupancy and planning (UniAD's base_e2e.py at toy size).
_base_ = ["../_base_/default_runtime.py"]

queue_length = 3
future_steps = 4
model = dict(
    type="MiniUniAD",
    embed_dims=32,
    num_query=4,
    num_dec_layers=6,
    loss_past_traj_weight=0.5,
    motion_head=dict(modes=3, future_steps=future_steps),
    occ_head=dict(occ_steps=2),
    planning_head=dict(future_steps=future_steps, collision_margins=(0.1, 0.2, 0.3)),
)
data = dict(
    samples_per_gpu=4,
    workers_per_gpu=0,
    train=dict(
        type="MiniDriveDataset", num_samples=320, queue_length=queue_length, future_steps=future_steps, seed=0
    ),
    # Scenes never trained on (another seed), evaluated at evaluation.interval as UniAD's val split.
    val=dict(type="MiniDriveDataset", num_samples=64, queue_length=queue_length, future_steps=future_steps, seed=1),
    test=dict(type="MiniDriveDataset", num_samples=64, queue_length=queue_length, future_steps=future_steps, seed=1),
)
# UniAD: lr 2e-4 with img_backbone lr_mult 0.1 on a pretrained backbone; the mini one trains from scratch.
optimizer = dict(type="AdamW", lr=2e-3, weight_decay=0.01)
optimizer_config = dict(grad_clip=dict(max_norm=35, norm_type=2))
lr_config = dict(
    policy="CosineAnnealing",
    warmup="linear",
    warmup_iters=20,
    warmup_ratio=1.0 / 3,
    min_lr_ratio=1e-3,
)
evaluation = dict(interval=4)  # UniAD: 6 in stage 1, 4 in stage 2
total_epochs = 20
runner = dict(type="EpochBasedRunner", max_epochs=total_epochs)
load_from = "ckpts/full_track_map.pth"
find_unused_parameters = False
