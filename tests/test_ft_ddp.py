"""Two processes (gloo, CPU) train like one: same teacher up to float rounding, rank 0 checkpoints."""


import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ocbench.tasks.dino_ssl import DinoConfig, train_dino

CFG = dict(epochs=2, batch_size=8, out_dim=32, head_hidden_dim=32, head_bottleneck_dim=16, local_crops=2,
           warmup_epochs=1, warmup_teacher_temp_epochs=1, drop_path_rate=0.0)  # drop path: per-process masks


class Views(torch.utils.data.Dataset):
    def __init__(self, n=16):
        self.x = torch.randn(n, 2, 16, 16, generator=torch.Generator().manual_seed(0))

    def __len__(self):
        return len(self.x)

    def __getitem__(self, key):
        epoch, position = key
        g = torch.Generator().manual_seed(epoch * 1000 + position)
        x = self.x[position]
        return [x + 0.1 * torch.randn(x.shape, generator=g) for _ in range(2)] + [
            x[:, :8, :8] + 0.1 * torch.randn(2, 8, 8, generator=g) for _ in range(2)]


def vits():
    from ocbench.backbones.vit import build_vit

    torch.manual_seed(0)
    a = build_vit("vit_small_patch8_224", {"embed_dim": 32, "depth": 1, "num_heads": 2, "img_size": 16}, in_chans=2)
    b = build_vit("vit_small_patch8_224", {"embed_dim": 32, "depth": 1, "num_heads": 2, "img_size": 16}, in_chans=2)
    b.load_state_dict(a.state_dict())
    return a, b


def _worker(rank, folder):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=2)
    try:
        student, teacher = vits()
        result = train_dino(DinoConfig(**CFG), student, teacher, Views(), checkpoint=folder / f"ckpt-{rank}.pt")
        torch.save({"teacher": result.teacher_backbone, "loss": [h["loss"] for h in result.history]}, folder / f"out-{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_gloo_processes_match_one(tmp_path):
    torch.set_num_threads(1)
    student, teacher = vits()
    single = train_dino(DinoConfig(**CFG), student, teacher, Views())
    mp.spawn(_worker, args=(tmp_path,), nprocs=2, join=True)
    assert (tmp_path / "ckpt-0.pt").is_file() and not (tmp_path / "ckpt-1.pt").exists()  # rank 0 checkpoints
    outs = [torch.load(tmp_path / f"out-{r}.pt", weights_only=True) for r in (0, 1)]
    for key, value in single.teacher_backbone.items():
        assert torch.equal(outs[0]["teacher"][key], outs[1]["teacher"][key])  # the ranks agree exactly
        torch.testing.assert_close(outs[0]["teacher"][key], value, rtol=1e-4, atol=1e-5)
    assert outs[0]["loss"] == pytest.approx([h["loss"] for h in single.history], rel=1e-4)
    moved = [k for k, v in single.teacher_backbone.items() if not torch.equal(v, vits()[1].state_dict()[k])]
    assert moved  # the comparison is between trained weights, not two copies of the start
