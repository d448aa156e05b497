import os

import torch

from replibook import runtime


def test_device_honours_env(monkeypatch):
    monkeypatch.setenv("REPLIBOOK_DEVICE", "cpu")
    assert runtime.device() == torch.device("cpu")
    assert runtime.device("cpu").type == "cpu"


def test_same_seed_same_numbers_on_cpu():
    def run(seed):
        runtime.seed_everything(seed)
        model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
        x = torch.randn(32, 8)
        opt = torch.optim.Adam(model.parameters(), 1e-2)
        for _ in range(5):
            loss = model(x).pow(2).mean()
            opt.zero_grad(); loss.backward(); opt.step()
        return torch.cat([p.detach().flatten() for p in model.parameters()])
    assert torch.equal(run(3), run(3))
    assert not torch.equal(run(3), run(4))


def test_cache_dir_uses_env(tmp_path, monkeypatch):
    monkeypatch.setenv("REPLIBOOK_CACHE", str(tmp_path))
    p = runtime.cache_dir("zoo")
    assert p == tmp_path / "zoo" and p.is_dir()


def test_config_hash_is_order_independent():
    assert runtime.config_hash({"a": 1, "b": [1, 2]}) == runtime.config_hash({"b": [1, 2], "a": 1})
    assert runtime.config_hash({"a": 1}) != runtime.config_hash({"a": 2})


def test_environment_card_has_ledger_fields():
    card = runtime.environment_card(torch.device("cpu"))
    for key in ("python", "torch", "device", "threads", "git_sha", "git_dirty"):
        assert key in card
    assert card["device"] == "cpu"


def test_autocast_is_disabled_on_cpu():
    assert not runtime.amp_enabled("cpu")
    with runtime.autocast("cpu"):
        y = torch.randn(4, 4) @ torch.randn(4, 4)
    assert y.dtype == torch.float32
