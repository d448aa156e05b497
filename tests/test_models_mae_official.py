"""models.mae: official MAE / timm ViT checkpoints load into TinyViT with identical outputs."""
from functools import partial

import pytest
import torch
from torch import nn

from replibook.errors import DatasetMissing
from replibook.models.mae import MAE, encode_visible, load_official_vit, official_to_tinyvit, sincos_pos_embed

timm = pytest.importorskip("timm")
from timm.models.vision_transformer import VisionTransformer  # noqa: E402


def _timm_vit(**kw):
    torch.manual_seed(0)
    vit = VisionTransformer(img_size=32, patch_size=8, in_chans=3, embed_dim=32, depth=3, num_heads=4, mlp_ratio=4,
                            qkv_bias=True, norm_layer=partial(nn.LayerNorm, eps=1e-6), **kw).eval()
    with torch.no_grad():             # random non-trivial norms, biases and embeddings
        for p in vit.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return vit


def _save(vit, path, extra=None):
    state = dict(vit.state_dict())
    state.update(extra or {})
    torch.save({"model": state}, path)


def test_pretrained_checkpoint_gives_the_same_tokens(tmp_path):
    ref = _timm_vit(num_classes=0, global_pool="token")
    # an official pre-training checkpoint may also hold the MAE decoder: it must be ignored
    _save(ref, tmp_path / "ckpt.pth",
          extra={"decoder_embed.weight": torch.randn(16, 32), "mask_token": torch.zeros(1, 1, 16)})
    vit = load_official_vit(tmp_path / "ckpt.pth", heads=4)
    assert (vit.dim, vit.depth, vit.heads, vit.patch_embed.patch, vit.grid) == (32, 3, 4, 8, (4, 4))
    x = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        want = ref.forward_features(x)
        tokens, layers = encode_visible(vit, x)
        assert torch.allclose(tokens, want, atol=1e-5)
        assert torch.allclose(vit.features(x), want[:, 0], atol=1e-5)
        # the teacher's partial execution: block 2's output equals timm's blocks[:2]
        t = ref.patch_embed(x)
        t = ref._pos_embed(t)
        t = ref.blocks[:2](t)
        assert torch.allclose(layers[1], t, atol=1e-5)


def test_finetuned_checkpoint_gives_the_same_logits(tmp_path):
    ref = _timm_vit(num_classes=7, global_pool="avg")
    assert "fc_norm.weight" in ref.state_dict() and "norm.weight" not in ref.state_dict()
    _save(ref, tmp_path / "ft.pth")
    vit = load_official_vit(tmp_path / "ft.pth", heads=4)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(vit(x), ref(x), atol=1e-5)


def test_key_map_covers_every_encoder_weight():
    ref = _timm_vit(num_classes=0, global_pool="token")
    mapped = official_to_tinyvit(ref.state_dict())
    assert set(mapped) == {k for k, _ in load_like(ref).state_dict().items()}


def load_like(ref):
    from replibook.models.vit import TinyViT
    return TinyViT(img_size=32, patch=8, in_chans=3, num_classes=0, dim=32, depth=3, heads=4, mlp_ratio=4)


def test_missing_checkpoint_names_file_env_and_link(tmp_path, monkeypatch):
    monkeypatch.setenv("REPLIBOOK_DATA", str(tmp_path))
    with pytest.raises(DatasetMissing) as err:
        load_official_vit("mae_pretrain_vit_large.pth")
    msg = str(err.value)
    assert "mae_pretrain_vit_large.pth" in msg and "REPLIBOOK_DATA" in msg
    assert "https://dl.fbaipublicfiles.com/mae/pretrain/mae_pretrain_vit_large.pth" in msg
    monkeypatch.delenv("REPLIBOOK_DATA")
    with pytest.raises(DatasetMissing, match="REPLIBOOK_DATA is not set"):
        load_official_vit("mae_visualize_vit_large.pth")


def test_found_under_replibook_data(tmp_path, monkeypatch):
    (tmp_path / "mae").mkdir()
    _save(_timm_vit(num_classes=0, global_pool="token"), tmp_path / "mae" / "mae_pretrain_vit_large.pth")
    monkeypatch.setenv("REPLIBOOK_DATA", str(tmp_path))
    assert load_official_vit("mae_pretrain_vit_large.pth").depth == 3


def test_sincos_matches_the_formula_and_is_fixed_in_mae():
    pe = sincos_pos_embed(8, (2, 3), prefix=1)
    assert pe.shape == (1, 7, 8) and pe[0, 0].abs().sum() == 0
    # token (row 1, col 2) is patch 1*3+2 = 5 -> row 6 after the prefix; channels 0..3 encode the column
    omega = 1.0 / 10000 ** (torch.arange(2) / 2)
    want = torch.cat([torch.sin(2 * omega), torch.cos(2 * omega), torch.sin(1 * omega), torch.cos(1 * omega)])
    assert torch.allclose(pe[0, 6], want.float(), atol=1e-6)
    from replibook.models.vit import TinyViT
    mae = MAE(TinyViT(img_size=16, patch=4, in_chans=1, dim=16, depth=1, heads=2), dec_dim=8, pos="sincos")
    assert not mae.encoder.pos_embed.requires_grad and not mae.decoder_pos.requires_grad
    assert torch.allclose(mae.decoder_pos, sincos_pos_embed(8, (4, 4), 1))
    assert all(p is not mae.encoder.pos_embed for p in mae.parameters() if p.requires_grad)
