"""DINO pieces against their definitions: loss, centre, EMA, schedules, head, clipping, augmentations."""

import dataclasses
import math

import numpy as np
import pytest
import torch

from ocbench.errors import DataError
from ocbench.tasks.dino_ssl import (
    DinoConfig,
    DinoHead,
    DinoLoss,
    cancel_last_layer_gradients,
    clip_gradients,
    cosine_schedule,
    ema_update,
    epoch_order,
    param_groups,
    teacher_temperature_schedule,
    train_dino,
)

torch.set_num_threads(1)


def tiny_vit(seed=0, **kwargs):
    from ocbench.backbones.vit import build_vit

    torch.manual_seed(seed)
    return build_vit("vit_small_patch8_224", {"embed_dim": 32, "depth": 1, "num_heads": 2, "img_size": 16, **kwargs}, in_chans=2)


class Views(torch.utils.data.Dataset):
    """Fixed random images; each view adds fresh noise (seeded by epoch and position)."""

    def __init__(self, n, local_crops=2):
        self.x = torch.randn(n, 2, 16, 16, generator=torch.Generator().manual_seed(0))
        self.local_crops = local_crops

    def __len__(self):
        return len(self.x)

    def __getitem__(self, key):
        epoch, position = key
        g = torch.Generator().manual_seed(epoch * 1000 + position)
        x = self.x[position]
        views = [x + 0.1 * torch.randn(x.shape, generator=g) for _ in range(2)]
        return views + [x[:, :8, :8] + 0.1 * torch.randn(2, 8, 8, generator=g) for _ in range(self.local_crops)]


def test_loss_equals_direct_computation_and_center_update():
    torch.manual_seed(1)
    batch, k, n_crops, t_temp, s_temp, m = 3, 5, 4, 0.04, 0.1, 0.9
    student = torch.randn(n_crops * batch, k)
    teacher = torch.randn(2 * batch, k)
    loss_fn = DinoLoss(k, n_crops, student_temp=s_temp, center_momentum=m)
    center = torch.randn(1, k)
    loss_fn.center.copy_(center)
    got = float(loss_fn(student, teacher, t_temp))

    s, t, c = student.double().numpy(), teacher.double().numpy(), center.double().numpy()[0]

    def softmax(v):
        e = np.exp(v - v.max())
        return e / e.sum()

    total, pairs = 0.0, 0
    for iq in range(2):
        for v in range(n_crops):
            if v == iq:
                continue
            ce = 0.0
            for b in range(batch):
                q = softmax((t[iq * batch + b] - c) / t_temp)
                p = softmax(s[v * batch + b] / s_temp)
                ce += -(q * np.log(p)).sum()
            total += ce / batch
            pairs += 1
    assert pairs == 2 * (n_crops - 1)
    assert got == pytest.approx(total / pairs, rel=1e-5)
    expected_center = m * c + (1 - m) * t.mean(axis=0)
    np.testing.assert_allclose(loss_fn.center.double().numpy()[0], expected_center, rtol=1e-6, atol=1e-7)


def test_ema_update_equals_formula():
    torch.manual_seed(0)
    student, teacher = torch.nn.Linear(4, 3), torch.nn.Linear(4, 3)
    before = [p.detach().double().clone() for p in teacher.parameters()]
    ema_update(teacher, student, 0.75)
    for t_before, t, s in zip(before, teacher.parameters(), student.parameters()):
        np.testing.assert_allclose(t.detach().double(), 0.75 * t_before + 0.25 * s.detach().double(), rtol=1e-6, atol=1e-7)
    ema_update(teacher, student, 1.0)  # momentum 1: the teacher does not move
    for t_before, t, s in zip(before, teacher.parameters(), student.parameters()):
        np.testing.assert_allclose(t.detach().double(), 0.75 * t_before + 0.25 * s.detach().double(), rtol=1e-6, atol=1e-7)


def test_schedules_equal_closed_forms():
    base, final, epochs, steps, warm, start = 1e-3, 1e-6, 10, 7, 2, 0.0
    s = cosine_schedule(base, final, epochs, steps, warm, start)
    assert s.shape == (70,)
    n_warm = warm * steps
    for i in (0, 5, 13):  # linear warm-up, both ends included
        assert s[i] == pytest.approx(start + (base - start) * i / (n_warm - 1))
    n = epochs * steps - n_warm
    for j in (0, 1, 28, 55):
        assert s[n_warm + j] == pytest.approx(final + 0.5 * (base - final) * (1 + math.cos(math.pi * j / n)))
    assert s.max() == pytest.approx(base) and s[-1] > final
    m = cosine_schedule(0.996, 1.0, 4, 3)
    assert m[0] == pytest.approx(0.996) and m[6] == pytest.approx(1.0 - 0.004 * 0.5 * (1 + math.cos(math.pi * 6 / 12)))
    cfg = DinoConfig(epochs=50, warmup_teacher_temp=0.04, teacher_temp=0.07, warmup_teacher_temp_epochs=30)
    temps = teacher_temperature_schedule(cfg)
    assert temps.shape == (50,) and temps[0] == pytest.approx(0.04) and temps[29] == pytest.approx(0.07)
    assert temps[10] == pytest.approx(0.04 + 0.03 * 10 / 29) and (temps[30:] == 0.07).all()


def test_head_param_groups_clipping_and_frozen_last_layer():
    head = DinoHead(8, 16, hidden_dim=12, bottleneck_dim=4, layers=3, norm_last_layer=True)
    out = head(torch.randn(5, 8))
    assert out.shape == (5, 16)
    np.testing.assert_allclose(head.last_layer_weight().norm(dim=1).detach(), 1.0, rtol=1e-6)
    groups = param_groups(head)
    assert all(p is not head.last_layer_g for g in groups for p in g["params"])  # fixed norm: not trained
    assert all(p.ndim > 1 for p in groups[0]["params"]) and all(p.ndim == 1 for p in groups[1]["params"])
    assert groups[1]["weight_decay"] == 0.0
    (out ** 2).sum().mul(100).backward()
    raw = {name: float(p.grad.norm()) for name, p in head.named_parameters() if p.grad is not None}
    clip = sorted(raw.values())[len(raw) // 2]  # some parameters clipped, some left alone
    norms = clip_gradients(head, clip)
    assert norms.tolist() == pytest.approx(list(raw.values()), rel=1e-5)
    for name, p in head.named_parameters():
        if p.grad is not None:  # each parameter on its own: min(norm, clip)
            assert float(p.grad.norm()) == pytest.approx(min(raw[name], clip), rel=1e-4)
    cancel_last_layer_gradients(head, epoch=1, freeze_epochs=1)
    assert head.last_layer_v.grad is not None
    cancel_last_layer_gradients(head, epoch=0, freeze_epochs=1)
    assert head.last_layer_v.grad is None and head.mlp[0].weight.grad is not None


def test_loss_decreases_against_a_fixed_teacher():
    # Teacher and centre held fixed (momenta 1), so the loss measures only what the student learns.
    cfg = DinoConfig(epochs=15, batch_size=8, lr=5e-3, lr_reference_batch=8, warmup_epochs=2, min_lr=1e-4, out_dim=32,
                     head_hidden_dim=32, head_bottleneck_dim=16, warmup_teacher_temp_epochs=0, teacher_temp=0.04,
                     local_crops=2, drop_path_rate=0.0, freeze_last_layer=0, momentum_teacher=1.0, center_momentum=1.0)
    student, teacher = tiny_vit(), tiny_vit()
    result = train_dino(cfg, student, teacher, Views(16))
    losses = [h["loss"] for h in result.history]
    assert len(losses) == 15 and all(math.isfinite(v) for v in losses)
    assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:3]), losses


def test_teacher_follows_student_by_ema_in_training():
    cfg = DinoConfig(epochs=2, batch_size=4, out_dim=16, head_hidden_dim=16, head_bottleneck_dim=8, local_crops=2,
                     warmup_epochs=1, drop_path_rate=0.0, momentum_teacher=0.9)
    student, teacher = tiny_vit(), tiny_vit()
    start = {k: v.clone() for k, v in teacher.state_dict().items()}
    result = train_dino(cfg, student, teacher, Views(8))
    moved = [k for k in start if not torch.equal(start[k], result.teacher_backbone[k])]
    assert "patch_embed.proj.weight" in moved
    assert result.history[-1]["momentum"] == pytest.approx(cosine_schedule(0.9, 1.0, 2, 2)[-1])


def test_data_order_is_a_function_of_seed_and_epoch():
    a, b = epoch_order(50, 3, 1), epoch_order(50, 3, 1)
    assert (a == b).all() and sorted(a) == list(range(50))
    assert not (a == epoch_order(50, 3, 2)).all() and not (a == epoch_order(50, 4, 1)).all()


def test_augmentations_shapes_determinism_and_channels():
    from ocbench.tasks.augment import MultiCropAugment

    cfg = DinoConfig(global_crop_size=24, local_crop_size=12, local_crops=3, warp_p=1.0)
    aug = MultiCropAugment(cfg)
    x = torch.rand(2, 40, 50) * 1000
    x[1] *= 0.001  # the second channel is 1000x dimmer: jitter and warps must keep channels apart
    crops = aug(x, torch.Generator().manual_seed(5))
    assert [tuple(c.shape) for c in crops] == [(2, 24, 24)] * 2 + [(2, 12, 12)] * 3
    again = aug(x, torch.Generator().manual_seed(5))
    assert all(torch.equal(a, b) for a, b in zip(crops, again))
    other = aug(x, torch.Generator().manual_seed(6))
    assert not torch.equal(crops[0], other[0])
    assert all(float(c[1].abs().max()) < 0.01 * float(c[0].abs().max()) for c in crops)
    assert all(torch.isfinite(c).all() for c in crops)


def test_crop_dataset_refuses_test_fovs():
    from ocbench.backbones.adapters import parse_channels
    from ocbench.tasks.augment import CropDataset
    from ocbench.tasks.finetune import scratch_card

    class Data:
        ids = ["a", "b", "c"]
        card = type("C", (), {"channel_names": ("protein", "nucleus")})()

        def read(self, i):
            return np.full((2, 16, 16), i, np.uint16)

    card = scratch_card("vit_small_patch8", Data.card, arch_kwargs={"embed_dim": 32, "depth": 1, "num_heads": 2})
    adapter = parse_channels(None, card, Data.card.channel_names)
    with pytest.raises(DataError, match="test-split FOVs"):
        CropDataset(Data(), [0, 2], card, adapter, DinoConfig(), 0, forbidden_ids=["c"])
    ok = CropDataset(Data(), [0, 1], card, adapter, DinoConfig(global_crop_size=16, local_crop_size=8, local_crops=1), 0,
                     forbidden_ids=["c"])
    assert len(ok) == 2 and [tuple(c.shape) for c in ok[(0, 1)]] == [(2, 16, 16)] * 2 + [(2, 8, 8)]


def test_identity_settings_give_the_image_and_warps_are_smooth():
    from ocbench.tasks.augment import MultiCropAugment

    x = torch.rand(2, 32, 32)
    plain = DinoConfig(global_crop_size=32, global_crop_scale=(1.0, 1.0), local_crops=0, flip_p=0.0, warp_p=0.0,
                       intensity_jitter=0.0)
    crops = MultiCropAugment(plain)(x, torch.Generator().manual_seed(0))
    assert len(crops) == 2 and all(torch.allclose(c, x, atol=1e-6) for c in crops)
    # a smooth ramp stays a smooth ramp under cell warping: neighbours differ little, nothing tears
    ramp = torch.linspace(0, 1, 32).expand(32, 32).repeat(2, 1, 1)
    warped = MultiCropAugment(dataclasses.replace(plain, warp_p=1.0, warp_strength=0.05))(ramp, torch.Generator().manual_seed(1))[0]
    assert not torch.allclose(warped, ramp, atol=1e-3)
    assert float((warped[:, :, 1:] - warped[:, :, :-1]).abs().max()) < 4 / 31
