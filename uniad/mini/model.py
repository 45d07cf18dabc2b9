"""The mini UniAD: UniAD's module layout, state_dict prefixes and loss keys at toy size.

Stage 1 builds the perception part (``img_backbone``, ``img_neck``, the track head ``pts_bbox_head`` with
``query_embedding``, ``reference_points``, ``query_interact``, ``memory_bank``, and the map head ``seg_head``).
Stage 2 adds ``motion_head``, ``occ_head`` and ``planning_head`` on top and starts from the stage-1 weights.

Track queries are matched to ground truth once, on the first frame of the queue, and keep that identity for the
later frames (MOTR/UniAD-style tracking), so the track losses only fall if the queries really follow their agents.
Every loss passes through ``torch.nan_to_num`` as in UniAD, which is why a NaN shows up in the log as 0.0.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .data import CLASSES, MAP_CLASSES

_PERMS: dict[int, torch.Tensor] = {}


def _permutations(n: int) -> torch.Tensor:
    if n not in _PERMS:
        _PERMS[n] = torch.tensor(list(itertools.permutations(range(n))), dtype=torch.long)
    return _PERMS[n]


def match_queries(cost: torch.Tensor) -> torch.Tensor:
    """Optimal one-to-one assignment for square cost matrices (B, Q, Q) by enumerating permutations.

    Returns (B, Q): the ground-truth slot assigned to each query. Q is at most 4 here, so 24 candidates.
    """
    b, q, g = cost.shape
    if q != g:
        raise ValueError(f"match_queries needs as many queries as ground-truth slots, got {q} and {g}")
    perms = _permutations(q).to(cost.device)  # perms[p, slot] = query
    totals = cost[:, perms, torch.arange(g, device=cost.device)].sum(-1)  # (B, P)
    query_of_slot = perms[totals.argmin(dim=1)]  # (B, Q)
    return query_of_slot.argsort(dim=1)


def _gather(t: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """t[b, index[b, q], ...] for t of shape (B, G, ...)."""
    shape = index.shape + t.shape[2:]
    idx = index.reshape(*index.shape, *([1] * (t.dim() - 2))).expand(shape)
    return t.gather(1, idx)


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mask = mask.to(values.dtype)
    while mask.dim() < values.dim():
        mask = mask.unsqueeze(-1)
    mask = mask.expand_as(values)
    return (values * mask).sum() / mask.sum().clamp(min=1.0)


def _giou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Generalised IoU of axis-aligned (cx, cy, w, h) boxes, elementwise over leading dims."""
    a1, a2 = a[..., :2] - a[..., 2:] / 2, a[..., :2] + a[..., 2:] / 2
    b1, b2 = b[..., :2] - b[..., 2:] / 2, b[..., :2] + b[..., 2:] / 2
    inter = (torch.min(a2, b2) - torch.max(a1, b1)).clamp(min=0).prod(-1)
    union = a[..., 2:].prod(-1) + b[..., 2:].prod(-1) - inter
    hull = (torch.max(a2, b2) - torch.min(a1, b1)).prod(-1)
    iou = inter / union.clamp(min=1e-6)
    return iou - (hull - union) / hull.clamp(min=1e-6)


def _dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    prob = logits.sigmoid().flatten(1)
    target = target.flatten(1)
    dice = (2 * (prob * target).sum(1) + 1) / (prob.sum(1) + target.sum(1) + 1)
    return (1 - dice).mean()


def sine_embed(coords: torch.Tensor, num_freqs: int = 4) -> torch.Tensor:
    """Sine/cosine features of (..., 2) coordinates in [-1, 1]: (..., 4 * num_freqs)."""
    freqs = torch.pi * 2.0 ** torch.arange(num_freqs, device=coords.device, dtype=coords.dtype)
    angles = coords.unsqueeze(-1) * freqs  # (..., 2, F)
    return torch.cat([angles.sin(), angles.cos()], dim=-1).flatten(-2)


class DecoderLayer(nn.Module):
    """Self-attention among queries, cross-attention to BEV tokens, FFN (post-norm, as in DETR decoders)."""

    def __init__(self, dims: int, heads: int = 4) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dims, heads, batch_first=True)
        self.cross_attn = nn.MultiheadAttention(dims, heads, batch_first=True)
        self.ffn = nn.Sequential(nn.Linear(dims, 2 * dims), nn.ReLU(inplace=True), nn.Linear(2 * dims, dims))
        self.norms = nn.ModuleList(nn.LayerNorm(dims) for _ in range(3))

    def forward(self, query, query_pos, memory, memory_pos):
        q = query + query_pos
        query = self.norms[0](query + self.self_attn(q, q, query, need_weights=False)[0])
        query = self.norms[1](
            query + self.cross_attn(query + query_pos, memory + memory_pos, memory, need_weights=False)[0]
        )
        return self.norms[2](query + self.ffn(query))


class TrackHead(nn.Module):
    """``pts_bbox_head``: a 6-layer query decoder run once per frame of the queue."""

    def __init__(self, dims: int, num_layers: int, num_classes: int, past_steps: int, bev_size: int) -> None:
        super().__init__()
        # Positions are sine features of BEV coordinates through a learned MLP, shared by the BEV grid and the
        # queries' reference points, so attention can look where a query's box is from the first step on.
        self.pos_mlp = nn.Sequential(nn.Linear(16, dims), nn.ReLU(inplace=True), nn.Linear(dims, dims))
        centers = (torch.arange(bev_size, dtype=torch.float32) + 0.5) / bev_size * 2 - 1
        ys, xs = torch.meshgrid(centers, centers, indexing="ij")
        self.register_buffer("bev_coords", torch.stack([xs, ys], dim=-1).view(1, -1, 2), persistent=False)
        self.layers = nn.ModuleList(DecoderLayer(dims) for _ in range(num_layers))
        self.cls_branches = nn.ModuleList(nn.Linear(dims, num_classes + 1) for _ in range(num_layers))
        self.reg_branches = nn.ModuleList(nn.Linear(dims, 4) for _ in range(num_layers))
        self.past_branches = nn.ModuleList(nn.Linear(dims, past_steps * 2) for _ in range(num_layers))
        self.past_steps = past_steps

    def bev_pos(self) -> torch.Tensor:
        return self.pos_mlp(sine_embed(self.bev_coords))

    def query_pos(self, ref: torch.Tensor) -> torch.Tensor:
        return self.pos_mlp(sine_embed(ref))


class MapHead(nn.Module):
    """``seg_head``: lane queries with class/box/IoU losses, thing masks from a pixel decoder, one stuff mask."""

    def __init__(self, dims: int, num_queries: int, num_layers: int, num_classes: int) -> None:
        super().__init__()
        self.query = nn.Embedding(num_queries, 2 * dims)
        self.layers = nn.ModuleList(DecoderLayer(dims) for _ in range(num_layers))
        self.cls_branches = nn.ModuleList(nn.Linear(dims, num_classes + 1) for _ in range(num_layers))
        self.reg_branches = nn.ModuleList(nn.Linear(dims, 4) for _ in range(num_layers))
        self.pixel_decoder = nn.ConvTranspose2d(dims, dims, 2, stride=2)
        self.mask_embed = nn.Linear(dims, dims)
        self.stuff_conv = nn.Conv2d(dims, 1, 1)


class MotionHead(nn.Module):
    def __init__(self, dims: int, modes: int, future_steps: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(2 * dims, dims), nn.ReLU(inplace=True), nn.Linear(dims, dims))
        self.traj_branch = nn.Linear(dims, modes * future_steps * 2)
        self.cls_branch = nn.Linear(dims, modes)
        self.modes = modes
        self.future_steps = future_steps


class OccHead(nn.Module):
    def __init__(self, dims: int, occ_steps: int) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(2 * dims, dims, 3, padding=1), nn.ReLU(inplace=True))
        self.aux_out = nn.Conv2d(dims, occ_steps, 1)
        self.refine = nn.Sequential(nn.Conv2d(dims, dims, 3, padding=1), nn.ReLU(inplace=True))
        self.out = nn.Conv2d(dims, occ_steps, 1)


class PlanningHead(nn.Module):
    def __init__(self, dims: int, future_steps: int, num_layers: int = 2) -> None:
        super().__init__()
        self.ego_query = nn.Embedding(1, 2 * dims)
        self.frame_embed = nn.Embedding(2, dims)
        self.layers = nn.ModuleList(DecoderLayer(dims) for _ in range(num_layers))
        self.traj_branch = nn.Linear(dims, future_steps * 2)
        self.future_steps = future_steps


class MiniUniAD(nn.Module):
    """UniAD-shaped model; ``train_step`` follows the mmcv runner's contract."""

    CLASSES = CLASSES

    def __init__(
        self,
        embed_dims: int = 32,
        img_size: int = 32,
        num_query: int = 4,
        num_dec_layers: int = 6,
        past_steps: int = 2,
        loss_past_traj_weight: float = 0.0,
        num_map_query: int = 2,
        num_map_layers: int = 2,
        mask_stuff_weight: float = 0.1,
        motion_head: dict | None = None,
        occ_head: dict | None = None,
        planning_head: dict | None = None,
    ) -> None:
        super().__init__()
        d = embed_dims
        self.num_query = num_query
        self.loss_past_traj_weight = loss_past_traj_weight
        self.mask_stuff_weight = mask_stuff_weight
        bev = img_size // 4
        self.img_backbone = nn.Sequential(
            nn.Conv2d(3, 16, 3, stride=2, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(16, 32, 3, stride=2, padding=1),
            nn.ReLU(inplace=True),
        )
        self.img_neck = nn.Conv2d(32, d, 1)
        self.query_embedding = nn.Embedding(num_query, 2 * d)
        self.reference_points = nn.Linear(d, 2)
        self.pts_bbox_head = TrackHead(d, num_dec_layers, len(CLASSES), past_steps, bev)
        self.query_interact = nn.Sequential(nn.Linear(d, d), nn.LayerNorm(d))
        self.memory_bank = nn.Linear(2 * d, d)
        self.seg_head = MapHead(d, num_map_query, num_map_layers, len(MAP_CLASSES))
        self.motion_head = MotionHead(d, **motion_head) if motion_head is not None else None
        self.occ_head = OccHead(d, **occ_head) if occ_head is not None else None
        if planning_head is not None:
            planning_head = dict(planning_head)
            self.collision_margins = tuple(planning_head.pop("collision_margins", (0.05, 0.1, 0.2)))
            self.planning_head = PlanningHead(d, **planning_head)
        else:
            self.planning_head = None

    # ----------------------------------------------------------------------------------------------- features
    def extract_feat(self, img: torch.Tensor) -> torch.Tensor:
        b, q = img.shape[:2]
        feat = self.img_neck(self.img_backbone(img.flatten(0, 1)))
        return feat.view(b, q, *feat.shape[1:])  # (B, Q, D, H, W)

    # -------------------------------------------------------------------------------------------------- track
    def _track(self, bev_tokens: torch.Tensor, data: dict, losses: dict | None) -> tuple[torch.Tensor, ...]:
        """Decode the queue frame by frame; a query keeps its identity (its track id) across frames. Without
        ``losses`` (test mode) nothing is matched to the ground truth; ``per_frame`` holds each frame's last-layer
        class probabilities and boxes."""
        head = self.pts_bbox_head
        b, frames = bev_tokens.shape[:2]
        pos, query = self.query_embedding.weight.unsqueeze(0).expand(b, -1, -1).chunk(2, dim=-1)
        ref = self.reference_points(pos).sigmoid() * 2 - 1
        bev_pos = head.bev_pos()
        slot_of_query = None
        per_frame = []
        for f in range(frames):
            outputs = []
            x = query
            query_pos = pos + head.query_pos(ref)
            for layer, cls_branch, reg_branch, past_branch in zip(
                head.layers, head.cls_branches, head.reg_branches, head.past_branches
            ):
                x = layer(x, query_pos, bev_tokens[:, f], bev_pos)
                reg = reg_branch(x)
                box = torch.cat([ref + reg[..., :2], reg[..., 2:].sigmoid() * 0.5], dim=-1)
                outputs.append((cls_branch(x), box, past_branch(x)))
            per_frame.append((outputs[-1][0].softmax(-1).detach(), outputs[-1][1].detach()))
            if losses is not None:
                slot_of_query = self._track_losses(outputs, f, slot_of_query, data, losses)
            # Carry the queries to the next frame: they keep their identity and follow their agents.
            ref = outputs[-1][1][..., :2].detach()
            query = self.memory_bank(torch.cat([self.query_interact(x), query], dim=-1))
        centers = outputs[-1][1][..., :2].detach()
        return x, centers, slot_of_query, per_frame

    def _track_losses(self, outputs, f: int, slot_of_query, data: dict, losses: dict) -> torch.Tensor:
        """Match queries to agents on the first frame (the match holds for the queue) and add frame f's losses."""
        head = self.pts_bbox_head
        num_classes = len(CLASSES)
        gt_labels, gt_boxes, valid_gt = data["gt_labels"], data["gt_boxes"], data["agent_mask"]
        if slot_of_query is None:
            with torch.no_grad():
                cls_last, box_last, _ = outputs[-1]
                prob = cls_last.softmax(-1)[..., :num_classes]  # (B, Q, C)
                label_idx = gt_labels.clamp(max=num_classes - 1)
                cost = -prob.gather(2, label_idx.unsqueeze(1).expand(-1, prob.shape[1], -1))
                cost = cost + torch.cdist(box_last, gt_boxes[:, f])
                cost = cost * valid_gt.unsqueeze(1)  # padding slots cost nothing
                slot_of_query = match_queries(cost)
        tgt_labels = _gather(gt_labels, slot_of_query)
        tgt_valid = tgt_labels < num_classes
        tgt_boxes = _gather(gt_boxes[:, f], slot_of_query)
        tgt_past = _gather(data["gt_past_trajs"][:, f], slot_of_query).flatten(2) - tgt_boxes[..., :2].repeat(
            1, 1, head.past_steps
        )
        for layer_idx, (cls, box, past) in enumerate(outputs):
            prefix = f"track.frame_{f}_"
            losses[f"{prefix}loss_cls_{layer_idx}"] = F.cross_entropy(cls.flatten(0, 1), tgt_labels.flatten())
            losses[f"{prefix}loss_bbox_{layer_idx}"] = _masked_mean((box - tgt_boxes).abs().sum(-1), tgt_valid)
            losses[f"{prefix}loss_past_trajs_{layer_idx}"] = self.loss_past_traj_weight * _masked_mean(
                (past - tgt_past).abs(), tgt_valid
            )
        return slot_of_query

    # ---------------------------------------------------------------------------------------------------- map
    def _decode_map(self, bev: torch.Tensor, bev_tokens: torch.Tensor):
        """Lane queries through the decoder (class and box per layer), thing mask logits and the stuff logits."""
        head = self.seg_head
        b = bev.shape[0]
        pos, x = head.query.weight.unsqueeze(0).expand(b, -1, -1).chunk(2, dim=-1)
        bev_pos = self.pts_bbox_head.bev_pos()
        outputs = []
        for layer, cls_branch, reg_branch in zip(head.layers, head.cls_branches, head.reg_branches):
            x = layer(x, pos, bev_tokens, bev_pos)
            reg = reg_branch(x).sigmoid()
            box = torch.cat([reg[..., :2] * 2 - 1, reg[..., 2:] * 2], dim=-1)
            outputs.append((cls_branch(x), box))
        pixels = head.pixel_decoder(bev)  # (B, D, 2H, 2W)
        masks = torch.einsum("bqd,bdhw->bqhw", head.mask_embed(x), pixels)
        return outputs, masks, head.stuff_conv(pixels).squeeze(1)

    def _map(self, bev: torch.Tensor, bev_tokens: torch.Tensor, data: dict, losses: dict) -> None:
        num_classes = len(MAP_CLASSES)
        outputs, masks, stuff = self._decode_map(bev, bev_tokens)
        gt_labels, gt_boxes = data["lane_labels"], data["lane_boxes"]
        with torch.no_grad():
            prob = outputs[-1][0].softmax(-1)[..., :num_classes]
            label_idx = gt_labels.clamp(max=num_classes - 1)
            cost = -prob.gather(2, label_idx.unsqueeze(1).expand(-1, prob.shape[1], -1))
            cost = (cost + torch.cdist(outputs[-1][1], gt_boxes, p=1)) * (gt_labels < num_classes).unsqueeze(1)
            slot_of_query = match_queries(cost)
        tgt_labels = _gather(gt_labels, slot_of_query)
        tgt_valid = tgt_labels < num_classes
        tgt_boxes = _gather(gt_boxes, slot_of_query)
        last = len(outputs) - 1
        for layer_idx, (cls, box) in enumerate(outputs):
            prefix = "map." if layer_idx == last else f"map.d{layer_idx}."
            losses[f"{prefix}loss_cls"] = F.cross_entropy(cls.flatten(0, 1), tgt_labels.flatten())
            losses[f"{prefix}loss_bbox"] = _masked_mean((box - tgt_boxes).abs().sum(-1), tgt_valid)
            losses[f"{prefix}loss_iou"] = _masked_mean(1 - _giou(box, tgt_boxes), tgt_valid)
        tgt_masks = _gather(data["lane_masks"], slot_of_query)
        bce = F.binary_cross_entropy_with_logits(masks, tgt_masks, reduction="none").flatten(2).mean(-1)
        # Every generated scene has at least one lane, so the matched set is never empty.
        losses["map.loss_mask_things"] = _masked_mean(bce, tgt_valid) + _dice_loss(
            masks[tgt_valid], tgt_masks[tgt_valid]
        )
        losses["map.loss_mask_stuff"] = self.mask_stuff_weight * F.binary_cross_entropy_with_logits(
            stuff, data["stuff_mask"]
        )

    # ------------------------------------------------------------------------------------------------- motion
    def _decode_motion(self, track_feats, centers, bev_tokens):
        """Per track query: ``modes`` future trajectories (absolute positions) and their scores."""
        head = self.motion_head
        context = bev_tokens[:, -1].mean(1, keepdim=True).expand_as(track_feats)
        feats = head.mlp(torch.cat([track_feats, context], dim=-1))
        b, q = feats.shape[:2]
        trajs = head.traj_branch(feats).view(b, q, head.modes, head.future_steps, 2).cumsum(3)
        return feats, trajs + centers[:, :, None, None, :], head.cls_branch(feats)

    def _motion(self, track_feats, centers, slot_of_query, bev_tokens, data, losses) -> torch.Tensor:
        feats, trajs, scores = self._decode_motion(track_feats, centers, bev_tokens)
        b, q = feats.shape[:2]
        gt = _gather(data["gt_future_trajs"], slot_of_query)  # (B, Q, T, 2)
        valid = _gather(data["agent_mask"].long(), slot_of_query).bool()
        dist_ = (trajs - gt.unsqueeze(2)).norm(dim=-1)  # (B, Q, M, T)
        ade, fde = dist_.mean(-1), dist_[..., -1]
        best = ade.argmin(-1)
        best_traj = trajs.gather(2, best[..., None, None, None].expand(-1, -1, 1, *trajs.shape[3:])).squeeze(2)
        l_reg = _masked_mean((best_traj - gt).abs().sum(-1).mean(-1), valid)
        l_class = _masked_mean(
            F.cross_entropy(scores.flatten(0, 1), best.flatten(), reduction="none").view(b, q), valid
        )
        losses["motion.loss_traj"] = l_reg + l_class
        losses["motion.l_class"] = l_class.detach()
        losses["motion.l_reg"] = l_reg.detach()
        min_fde = fde.min(-1).values
        losses["motion.min_ade"] = _masked_mean(ade.min(-1).values, valid).detach()
        losses["motion.min_fde"] = _masked_mean(min_fde, valid).detach()
        losses["motion.mr"] = _masked_mean((min_fde > 0.2).float(), valid)
        return feats

    # ---------------------------------------------------------------------------------------------------- occ
    def _decode_occ(self, bev: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Future occupancy logits per step: the auxiliary ones and the refined ones."""
        head = self.occ_head
        stem = head.stem(torch.cat([bev[:, -2], bev[:, -1]], dim=1))
        return head.aux_out(stem), head.out(head.refine(stem))

    def _occ(self, bev: torch.Tensor, data: dict, losses: dict) -> None:
        target = data["occ_future"]
        aux, out = self._decode_occ(bev)
        for prefix, logits in (("occ.loss_aux_", aux), ("occ.loss_", out)):
            losses[f"{prefix}mask"] = F.binary_cross_entropy_with_logits(logits, target)
            losses[f"{prefix}dice"] = _dice_loss(logits.flatten(0, 1), target.flatten(0, 1))

    # ----------------------------------------------------------------------------------------------- planning
    def _decode_plan(self, bev_tokens, motion_feats) -> torch.Tensor:
        """The ego's future positions (B, T, 2)."""
        head = self.planning_head
        b = bev_tokens.shape[0]
        pos, x = head.ego_query.weight.unsqueeze(0).expand(b, -1, -1).chunk(2, dim=-1)
        bev_pos = self.pts_bbox_head.bev_pos()
        memory = torch.cat([bev_tokens[:, -2], bev_tokens[:, -1], motion_feats], dim=1)
        memory_pos = torch.cat(
            [
                bev_pos + head.frame_embed.weight[0],
                bev_pos + head.frame_embed.weight[1],
                torch.zeros_like(motion_feats[:1]),
            ],
            dim=1,
        ).expand(b, -1, -1)
        for layer in head.layers:
            x = layer(x, pos, memory, memory_pos)
        return head.traj_branch(x).view(b, head.future_steps, 2).cumsum(1)

    def _planning(self, bev_tokens, motion_feats, data, losses) -> None:
        plan = self._decode_plan(bev_tokens, motion_feats)
        target = data["ego_future"]
        losses["planning.loss_ade"] = (plan - target).norm(dim=-1).mean()
        agents = data["gt_future_trajs"]  # (B, A, T, 2)
        gap = (plan.unsqueeze(1) - agents).norm(dim=-1)  # (B, A, T)
        for i, margin in enumerate(self.collision_margins):
            losses[f"planning.loss_collision_{i}"] = _masked_mean((margin - gap).clamp(min=0), data["agent_mask"])

    # ---------------------------------------------------------------------------------------------- interface
    def forward(self, return_loss: bool = True, **data):
        if not return_loss:
            return self.simple_test(**data)
        bev = self.extract_feat(data["img"])  # (B, Q, D, H, W)
        bev_tokens = bev.flatten(3).transpose(2, 3)  # (B, Q, HW, D)
        losses: dict[str, torch.Tensor] = OrderedDict()
        track_feats, centers, slot_of_query, _ = self._track(bev_tokens, data, losses)
        self._map(bev[:, -1], bev_tokens[:, -1], data, losses)
        motion_feats = track_feats
        if self.motion_head is not None:
            motion_feats = self._motion(track_feats, centers, slot_of_query, bev_tokens, data, losses)
        if self.occ_head is not None:
            self._occ(bev, data, losses)
        if self.planning_head is not None:
            self._planning(bev_tokens, motion_feats, data, losses)
        return OrderedDict((k, torch.nan_to_num(v)) for k, v in losses.items())

    @torch.no_grad()
    def simple_test(self, img: torch.Tensor, **_ground_truth) -> list[dict]:
        """Test mode, as mmdet models answer ``model(return_loss=False, **data)``: one dict of numpy predictions
        per sample, from the images alone (the ground truth in the batch is never looked at)."""
        bev = self.extract_feat(img)
        bev_tokens = bev.flatten(3).transpose(2, 3)
        track_feats, centers, _, per_frame = self._track(bev_tokens, {}, None)
        map_outputs, lane_logits, stuff_logits = self._decode_map(bev[:, -1], bev_tokens[:, -1])
        out = {
            "track_probs": torch.stack([p for p, _ in per_frame], 1),  # (B, frames, Q, C + 1), last = no object
            "track_boxes": torch.stack([b for _, b in per_frame], 1),  # (B, frames, Q, 4)
            "lane_probs": map_outputs[-1][0].softmax(-1),  # (B, Qm, C + 1)
            "lane_masks": lane_logits.sigmoid(),  # (B, Qm, H, W)
            "drivable": stuff_logits.sigmoid(),  # (B, H, W)
        }
        motion_feats = track_feats
        if self.motion_head is not None:
            motion_feats, trajs, scores = self._decode_motion(track_feats, centers, bev_tokens)
            out.update(motion_trajs=trajs, motion_scores=scores.softmax(-1))
        if self.occ_head is not None:
            out["occupancy"] = self._decode_occ(bev)[1].sigmoid()
        if self.planning_head is not None:
            out["plan"] = self._decode_plan(bev_tokens, motion_feats)
        batch = img.shape[0]
        return [{k: v[i].float().cpu().numpy() for k, v in out.items()} for i in range(batch)]

    @staticmethod
    def parse_losses(losses: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        """Sum the keys that contain 'loss' (as mmdet does); average every logged value across ranks."""
        loss = sum(v for k, v in losses.items() if "loss" in k)
        names = [*losses.keys(), "loss"]
        values = torch.stack([v.detach().float().mean() for v in losses.values()] + [loss.detach().float()])
        if dist.is_available() and dist.is_initialized():
            # One collective for all keys: the per-key all_reduce of mmdet costs ~100 round trips per iteration.
            values = values / dist.get_world_size()
            dist.all_reduce(values)
        return loss, dict(zip(names, values.tolist()))

    loss_fault: str | None = None  # set by the trainer's FaultInjectionHook only

    def train_step(self, data: dict, optimizer=None) -> dict:
        losses = self(**data)
        if self.loss_fault == "nan_loss":
            losses["map.loss_cls"] = losses["map.loss_cls"] * float("nan")
        elif self.loss_fault == "grad_explosion":
            losses["map.loss_cls"] = losses["map.loss_cls"] * 1e6
        elif self.loss_fault == "zero_head":
            losses["map.loss_cls"] = losses["map.loss_cls"] * 0.0
        loss, log_vars = self.parse_losses(losses)
        return dict(loss=loss, log_vars=log_vars, num_samples=data["img"].shape[0])
