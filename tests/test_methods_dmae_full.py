"""methods.dmae, full preset path: ImageNet loaders, official-format teachers, streaming pre-training,
fine-tuning (layer decay, mixup/cutmix, global pool, logit KD) and evaluation, on tiny fakes on CPU."""
from functools import partial

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from replibook.errors import DatasetMissing
from replibook.methods import dmae as DM
from replibook.models.mae import encode_visible

timm = pytest.importorskip("timm")
from timm.models.vision_transformer import VisionTransformer  # noqa: E402

WNIDS = ["n01440764", "n01443537", "n01484850"]
SIZE, PATCH = 32, 8


@pytest.fixture
def data_root(tmp_path, monkeypatch):
    """$REPLIBOOK_DATA with a fake ImageNet (3 classes, JPEGs of varied sizes) and two official-format
    MAE checkpoints (a pre-trained encoder with a decoder key, and a fine-tuned global-pool classifier)."""
    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("val", 2)):
        for k, wnid in enumerate(WNIDS):
            d = tmp_path / "imagenet" / split / wnid
            d.mkdir(parents=True)
            for i in range(n):
                arr = rng.integers(0, 255, (36 + 4 * i, 40 + 3 * k, 3), dtype=np.uint8)
                arr[..., k] = 255                                    # a class colour
                Image.fromarray(arr).save(d / f"{wnid}_{i}.JPEG", quality=90)
    (tmp_path / "mae").mkdir()
    for name, kw in (("teacher_pre.pth", dict(num_classes=0, global_pool="token")),
                     ("teacher_ft.pth", dict(num_classes=3, global_pool="avg"))):
        torch.manual_seed(1)
        vit = VisionTransformer(img_size=SIZE, patch_size=PATCH, embed_dim=32, depth=3, num_heads=4, mlp_ratio=4,
                                qkv_bias=True, norm_layer=partial(nn.LayerNorm, eps=1e-6), **kw)
        state = dict(vit.state_dict())
        if kw["num_classes"] == 0:
            state["decoder_embed.weight"] = torch.zeros(16, 32)
        torch.save({"model": state}, tmp_path / "mae" / name)
    monkeypatch.setenv("REPLIBOOK_DATA", str(tmp_path))
    return tmp_path


STUDENT = dict(img_size=SIZE, patch=PATCH, in_chans=3, dim=16, depth=3, heads=2, mlp_ratio=4, dec_dim=16,
               dec_depth=1, dec_heads=2, pos="sincos", norm_eps=1e-6)


def test_full_path_pretrain_finetune_kd_evaluate(data_root):
    data = DM.imagenet_data(size=SIZE, batch_size=6, ft_batch_size=6, workers=0)
    assert (data.num_classes, data.n_train, data.n_val) == (3, 18, 6) and data.card()["n_train"] == 18
    teacher = DM.teacher_model({"checkpoint": "teacher_pre.pth", "heads": 4})
    assert teacher.depth == 3 and not any(p.requires_grad for p in teacher.parameters())
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    mae = DM.make_student(0, mask_ratio=0.75, num_classes=0, **STUDENT)
    model = DM.DistilledMAE(mae, teacher, student_block=2, teacher_block=2)
    w0 = mae.encoder.encoder.blocks[0].mlp[0].weight.clone()
    hist = DM.pretrain(model, data.pretrain, epochs=2, warmup_epochs=1, lr=1e-3, accum=2, seed=0)
    # 3 batches an epoch, 2 per update: 1 update an epoch (the odd batch's gradient is dropped, as in MAE)
    assert hist.steps == [1, 2] and np.isfinite(hist.train_loss).all() and hist.wall_s > 0
    assert not torch.equal(w0, mae.encoder.encoder.blocks[0].mlp[0].weight)
    assert not mae.encoder.pos_embed.requires_grad                     # MAE's fixed sin-cos positions
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    # timing on one uint8 batch, normalised on the device
    xt = DM.prepare(data.timing_batch(4))
    assert xt.shape == (4, 3, SIZE, SIZE) and xt.dtype == torch.float32
    assert DM.step_time(model, xt, steps=1, batch_size=2, warmup=0, amp=True) > 0
    vit = mae.encoder
    state = {k: v.clone() for k, v in vit.state_dict().items()}
    recipe = dict(num_classes=data.num_classes, layer_decay=0.7, warmup_epochs=0.5, min_lr=1e-6, smoothing=0.1,
                  mixup=0.8, cutmix=1.0, reprob=0.25, drop_path=0.1, randaug=True, global_pool=True)
    DM.finetune(vit, data.finetune, epochs=1, lr=1e-3, seed=0, **recipe)
    assert vit.pool == "mean" and isinstance(vit.fc_norm, nn.LayerNorm) and vit.head.out_features == 3
    assert all(b.drop_path == 0.0 for b in vit.encoder.blocks)          # stochastic depth off after training
    acc = DM.evaluate(vit, data.val)
    assert 0.0 <= acc <= 1.0
    # the logit-KD baseline: the same pre-trained student, fine-tuned with a fine-tuned teacher's logits
    kd_teacher = DM.teacher_model({"checkpoint": "teacher_ft.pth", "heads": 4})
    assert kd_teacher.head.out_features == 3 and kd_teacher.pool == "mean"
    vit2 = DM.make_student(0, num_classes=0, **STUDENT).encoder
    vit2.load_state_dict(state)
    DM.finetune(vit2, data.finetune, epochs=1, lr=1e-3, seed=0, kd_teacher=kd_teacher, max_steps=2, **recipe)
    assert 0.0 <= DM.evaluate(vit2, data.val) <= 1.0


def test_streaming_pretrain_is_deterministic_and_tensor_path_unchanged(data_root):
    data = DM.imagenet_data(size=SIZE, batch_size=6, workers=0)
    weights = []
    for _ in range(2):
        mae = DM.make_student(3, num_classes=0, **STUDENT)
        DM.pretrain(DM.DistilledMAE(mae), data.pretrain, epochs=1, lr=1e-3, seed=3, max_steps=2)
        weights.append(mae.encoder.encoder.blocks[1].attn.qkv.weight.detach().clone())
    assert torch.equal(weights[0], weights[1])
    with pytest.raises(ValueError, match="needs epochs"):
        DM.pretrain(DM.DistilledMAE(DM.make_student(0)), data.pretrain)
    with pytest.raises(TypeError, match="loaders only"):
        DM.finetune(DM.make_student(0).encoder, torch.rand(4, 1, 16, 16), torch.arange(4), epochs=1, mixup=0.8)


def test_missing_teacher_and_data_are_clear(data_root, monkeypatch):
    with pytest.raises(DatasetMissing, match="mae_visualize_vit_large.pth.*REPLIBOOK_DATA"):
        DM.teacher_model({"checkpoint": "mae_visualize_vit_large.pth"})
    monkeypatch.setenv("REPLIBOOK_DATA", str(data_root / "nowhere"))
    with pytest.raises(DatasetMissing, match="ImageNet"):
        DM.imagenet_data(size=SIZE)


def test_teacher_partial_execution_matches_timm_blocks(data_root):
    teacher = DM.teacher_model({"checkpoint": "teacher_pre.pth", "heads": 4})
    ref = VisionTransformer(img_size=SIZE, patch_size=PATCH, embed_dim=32, depth=3, num_heads=4, mlp_ratio=4,
                            qkv_bias=True, norm_layer=partial(nn.LayerNorm, eps=1e-6), num_classes=0)
    ref.load_state_dict(torch.load(data_root / "mae" / "teacher_pre.pth")["model"], strict=False)
    x = torch.randn(2, 3, SIZE, SIZE)
    keep = torch.tensor([[0, 5, 9, 15], [1, 2, 3, 4]])
    with torch.no_grad():
        _, layers = encode_visible(teacher, x, keep, upto=2)
        t = ref._pos_embed(ref.patch_embed(x))
        vis = torch.cat([t[:, :1], t[:, 1:].gather(1, keep[..., None].expand(-1, -1, 32))], dim=1)
        want = ref.blocks[:2](vis)
    assert torch.allclose(layers[1], want, atol=1e-5)


def test_lr_schedule_and_mixing():
    assert DM.lr_at(0.0, 1.0, 2, 10) == 0.0 and DM.lr_at(1.0, 1.0, 2, 10) == pytest.approx(0.5)
    assert DM.lr_at(2.0, 1.0, 2, 10) == pytest.approx(1.0) and DM.lr_at(10.0, 1.0, 2, 10, 0.1) == pytest.approx(0.1)
    x = torch.rand(4, 3, 8, 8)
    y = torch.tensor([0, 1, 2, 0])
    xm, t = DM.mix_batch(x, y, 3, smoothing=0.1)
    assert torch.equal(xm, x) and torch.allclose(t.sum(1), torch.ones(4)) and t[1, 1] == pytest.approx(0.9 + 0.1 / 3)
    for kw in ({"mixup": 0.8}, {"cutmix": 1.0}):
        xm, t = DM.mix_batch(x, y, 3, generator=torch.Generator().manual_seed(0), **kw)
        assert torch.allclose(t.sum(1), torch.ones(4)) and not torch.equal(xm, x)
        lam = t[1, 1].item()                                    # sample 1 is mixed with sample 2 (reversed)
        assert 0.0 <= lam <= 1.0 and t[1, 2].item() == pytest.approx(1 - lam)


def test_random_erase_and_drop_path():
    from replibook.models.vit import TinyViT, drop_path, set_drop_path
    x = torch.zeros(50, 3, 16, 16)
    out = DM.random_erase(x, 0.5, torch.Generator().manual_seed(0))
    erased = (out != 0).flatten(1).any(1)
    assert 10 < int(erased.sum()) < 40 and torch.equal(x, torch.zeros_like(x))        # ~half, input untouched
    frac = (out[erased] != 0).float().mean(dim=(1, 2, 3))
    assert (frac >= 0.015).all() and (frac <= 0.34).all()
    assert torch.equal(DM.random_erase(x, 0.0, torch.Generator()), x)
    # stochastic depth: identity in eval, per-sample 0 or 1/keep in training, linear rates over blocks
    b = torch.ones(1000, 4)
    assert torch.equal(drop_path(b, 0.3, False), b)
    kept = drop_path(b, 0.3, True)[:, 0]
    assert torch.isclose(kept[kept > 0], torch.tensor(1 / 0.7)).all() and 0.6 < float((kept > 0).float().mean()) < 0.8
    vit = TinyViT(img_size=16, patch=4, depth=3, dim=16, heads=2)
    set_drop_path(vit, 0.2)
    assert [blk.drop_path for blk in vit.encoder.blocks] == pytest.approx([0.0, 0.1, 0.2])
    x = torch.rand(4, 1, 16, 16)
    vit.eval()
    with torch.no_grad():
        a = vit(x)
        set_drop_path(vit, 0.0)
        assert torch.equal(a, vit(x))                                      # no effect outside training


def test_rand_augment_ops_and_batch():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (6, 3, 20, 24), dtype=torch.uint8, generator=g)
    for op in DM._RAND_OPS:
        for level in (0.0, 0.9):
            out = DM._rand_op(x[0], op, level, 1.0, [124.0, 116.0, 104.0])
            assert out.dtype == torch.uint8 and out.shape == x[0].shape
    assert torch.equal(DM._rand_op(x[0], "Invert", 0.5, 1.0, [0.0] * 3), 255 - x[0])
    assert torch.equal(DM._rand_op(x[0], "Rotate", 0.0, 1.0, [0.0] * 3), x[0])          # level 0: no change
    assert torch.equal(DM._rand_op(x[0], "Brightness", 0.0, 1.0, [0.0] * 3), x[0])
    assert (DM._rand_op(x[0], "Posterize", 0.0, 1.0, [0.0] * 3) % 16 == 0).all()      # 4 bits kept
    assert (DM._rand_op(x[0], "Posterize", 1.0, 1.0, [0.0] * 3) == 0).all()
    assert torch.equal(DM._rand_op(x[0], "Solarize", 0.0, 1.0, [0.0] * 3), x[0])      # threshold 256: none
    assert torch.equal(DM._rand_op(x[0], "Solarize", 1.0, 1.0, [0.0] * 3), 255 - x[0])
    solar = DM._rand_op(x[0], "SolarizeAdd", 1.0, 1.0, [0.0] * 3)
    low = x[0] < 128
    assert torch.equal(solar[~low], x[0][~low]) and (solar[low].int() >= x[0][low].int()).all()
    a = DM.rand_augment(x, torch.Generator().manual_seed(1))
    b = DM.rand_augment(x, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and a.dtype == torch.uint8 and not torch.equal(a, x)
    assert torch.equal(DM.rand_augment(x, torch.Generator().manual_seed(1), p=0.0), x)
    xn = DM.prepare(x, augment=lambda t: 255 - t)
    assert torch.allclose(xn, DM.prepare(255 - x))


def test_notebook_full_preset_runs_on_tiny_fakes(data_root, monkeypatch):
    """The chapter's own cells, size="full", with the architecture shrunk (same code path: ImageNet
    loaders, official-format teachers, streaming pre-training, fine-tuning recipe, KD, timing, claims)."""
    import matplotlib
    import nbformat
    from pathlib import Path
    matplotlib.use("Agg")
    monkeypatch.delenv("REPLIBOOK_RUN_DIR", raising=False)
    nb = nbformat.read(Path(__file__).resolve().parents[1] / "notebooks" / "dmae.ipynb", as_version=4)
    src = "\n\n".join(c.source for c in nb.cells if c.cell_type == "code")
    assert 'size = "smoke"' in src and 'ch = rb.Chapter("dmae"' in src
    src = src.replace('size = "smoke"', 'size = "full"', 1).replace('device = None ', 'device = "cpu"', 1)
    src = src.replace('ch = rb.Chapter("dmae"', 'PRESETS["full"].update(TINY)\nch = rb.Chapter("dmae"', 1)
    tiny = dict(size=SIZE, teacher={"checkpoint": "teacher_pre.pth", "heads": 4},
                teacher_ft={"checkpoint": "teacher_ft.pth", "heads": 4},
                student={k: v for k, v in STUDENT.items() if k != "img_size"} | {"num_classes": 0},
                epochs=1, warmup_epochs=0.5, batch_size=6, accum=1, ft_epochs=1, ft_batch_size=6, ft_accum=1,
                align=(2, 2), timing_steps=1, timing_batch=4, workers=0)
    ns = {"TINY": tiny}
    exec(compile(src, "dmae.ipynb", "exec"), ns)
    ch, record = ns["ch"], ns["record"]
    assert ch.size == "full" and ch.fidelity == "faithful" and len(ch.seeds) == 3
    assert {c.id for c in ch.claims} == {"C1", "C1b", "C2", "C3"}
    for method, setting in (("MAE", "mask 0.75"), ("DMAE", "mask 0.75"), ("DMAE", "mask 0.95"),
                            ("KD (fine-tuned teacher)", "mask 0.75")):
        assert len(ch.values("ft_acc", method, setting)) == 3
    assert len(ch.values("step_s", "DMAE (partial teacher)", "mask 0.75")) == 3
    assert record["data_sources"][0]["name"] == "ImageNet-1k" and any("accumulation" in d for d in ch.deviations)


def test_projection_is_built_on_the_students_device():
    with torch.device("meta"):
        mae = DM.make_student(0, dim=16, depth=2, dec_dim=16)
        teacher = DM.make_student(1, dim=32, depth=2, dec_dim=16).encoder
    model = DM.DistilledMAE(mae, teacher, student_block=1, teacher_block=1)
    assert model.proj.weight.device.type == "meta"
