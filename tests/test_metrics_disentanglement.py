"""Known-answer tests for replibook.metrics.disentanglement.

Codes used throughout (factors: 6 independent discrete factors, 600 samples):
- ``perfect``: the factors, permuted, jittered inside each level and passed through a
  monotone map (so a continuous code that identifies every factor with one latent);
- ``rotated``: the standardised perfect code times a random rotation (same information,
  entangled);
- ``noise``: Gaussian noise independent of the factors.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.feature_selection import mutual_info_classif

from replibook.metrics import disentanglement as dm

LEVELS = (6, 5, 4, 4, 3, 5)
N = 600


@pytest.fixture(scope="module")
def codes():
    rng = np.random.default_rng(0)
    f = np.stack([rng.integers(0, k, N) for k in LEVELS], 1)
    perm = rng.permutation(len(LEVELS))
    perfect = np.exp(0.4 * (f + rng.uniform(0, 0.8, f.shape)))[:, perm]
    std = (perfect - perfect.mean(0)) / perfect.std(0)
    q, _ = np.linalg.qr(rng.normal(size=(len(LEVELS), len(LEVELS))))
    return {"factors": f, "perm": perm, "perfect": perfect, "rotated": std @ q,
            "noise": rng.normal(size=(N, 8)), "discrete": f[:, perm] * 3 + 1}


@pytest.fixture(scope="module")
def scores(codes):
    f = codes["factors"]
    out = {}
    for name in ("perfect", "rotated", "noise"):
        z = codes[name]
        out[name] = {**{k: v for k, v in dm.infomec(f, z).items()},
                     "mig": dm.mig(f, z), **{f"dci_{k}": v for k, v in dm.dci(f, z).items()},
                     "sap": dm.sap(f, z), **dm.modularity_explicitness(f, z)}
    return out


def test_perfect_code_scores_near_one(scores):
    s = scores["perfect"]
    for key in ("infom", "infoc", "infoe", "mig", "dci_disentanglement", "dci_completeness",
                "dci_informativeness", "modularity", "explicitness"):
        assert s[key] > 0.9, (key, s[key])
    # SAP's second-best latent still scores chance accuracy (1/K), so a perfect code is < 1
    assert s["sap"] > 0.3


def test_rotation_lowers_disentanglement_not_informativeness(scores):
    p, r = scores["perfect"], scores["rotated"]
    for key in ("infom", "infoc", "mig", "dci_disentanglement", "dci_completeness", "sap"):
        assert r[key] < p[key] - 0.25, (key, p[key], r[key])
    assert r["modularity"] < p["modularity"] - 0.05
    # a rotation keeps the information linearly available: the explicitness scores stay high
    assert r["infoe"] > 0.95 and r["explicitness"] > 0.95


def test_noise_scores_near_zero(scores, codes):
    s = scores["noise"]
    for key in ("infoe", "mig", "dci_disentanglement", "dci_completeness", "sap"):
        assert s[key] < 0.08, (key, s[key])
    assert abs(s["explicitness"] - 0.5) < 0.06           # an AUC: chance is 0.5
    assert s["dci_informativeness"] < 0.35                 # about chance accuracy
    assert s["nmi_all"].max() < 0.05                       # every NMI at the estimator's floor
    # discrete noise codes on the discrete path: InfoM and InfoC near 0 as well
    rng = np.random.default_rng(5)
    d = dm.infomec(codes["factors"], rng.integers(0, 4, (N, 8)), discrete_z=True)
    assert d["infom"] < 0.15 and d["infoc"] < 0.15 and d["infoe"] < 0.15


def test_discrete_perfect_code(codes):
    r = dm.infomec(codes["factors"], codes["discrete"], discrete_z=True)
    assert r["infom"] > 0.9 and r["infoc"] > 0.9 and r["infoe"] > 0.95
    assert r["n_active"] == len(LEVELS)
    # NMI of latent j with the factor it copies is exactly 1 (plug-in MI of a relabelling)
    for j, k in enumerate(codes["perm"]):
        assert r["nmi_all"][k, j] == pytest.approx(1.0)


def test_results_do_not_depend_on_latent_order(codes):
    f, z = codes["factors"], np.concatenate([codes["perfect"], codes["noise"][:, :2]], 1)
    order = np.random.default_rng(3).permutation(z.shape[1])
    a, b = dm.infomec(f, z), dm.infomec(f, z[:, order])
    for key in ("infom", "infoe", "infoc"):
        assert a[key] == pytest.approx(b[key], abs=1e-6)
    np.testing.assert_allclose(a["nmi_all"][:, order], b["nmi_all"], atol=1e-6)
    assert dm.mig(f, z) == pytest.approx(dm.mig(f, z[:, order]))
    assert dm.sap(f, z) == pytest.approx(dm.sap(f, z[:, order]))
    assert dm.modularity_explicitness(f, z)["modularity"] == pytest.approx(
        dm.modularity_explicitness(f, z[:, order])["modularity"])
    da, db = dm.dci(f, z), dm.dci(f, z[:, order])
    assert da["disentanglement"] == pytest.approx(db["disentanglement"], abs=0.03)
    np.testing.assert_allclose(da["importance"][order], db["importance"], atol=0.05)


def test_ksg_matches_sklearn_exactly():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 5, 400)
    x = np.stack([y + rng.normal(0, s, 400) for s in (0.1, 1.0, 3.0)]
                 + [rng.normal(size=400), np.round(y + rng.normal(0, 1, 400))], 1)   # last: ties
    x = (x - x.mean(0)) / x.std(0)
    ref = mutual_info_classif(x, y, discrete_features=False, n_neighbors=10, random_state=7)
    np.testing.assert_allclose(dm.ksg_mutual_info_classif(x, y, n_neighbors=10, seed=7), ref, atol=1e-12)


def test_inactive_latents_are_pruned(codes):
    f, z = codes["factors"], codes["perfect"]
    rng = np.random.default_rng(2)
    span = z.max() - z.min()
    tiny = rng.uniform(0, span / 40, (N, 1))                # range below max range / 20
    a, b = dm.infomec(f, z), dm.infomec(f, np.concatenate([z, tiny], 1))
    assert b["n_active"] == a["n_active"] == len(LEVELS)
    assert not b["active"][-1] and b["nmi"].shape == (len(LEVELS), len(LEVELS))
    assert b["infom"] == pytest.approx(a["infom"], abs=1e-6)
    d = dm.infomec(f, np.concatenate([codes["discrete"], np.zeros((N, 2), int)], 1), discrete_z=True)
    assert d["n_active"] == len(LEVELS) and d["active"].tolist()[-2:] == [False, False]


def test_infoe_null_is_intercept_only_entropy():
    # balanced classes: the intercept-only balanced model predicts uniform -> H_null = log K,
    # so a code that predicts nothing scores 0 and a perfect one-hot code scores ~1
    y = np.repeat(np.arange(4), 50)[:, None]
    assert dm.infoe(y, np.zeros((200, 3))) == pytest.approx(0.0, abs=1e-6)
    assert dm.infoe(y, y, discrete_z=True) > 0.95


def test_mig_exact_known_answer():
    f = np.repeat(np.arange(5), 40)[:, None]
    z = np.stack([f[:, 0] * 2.0, np.zeros(200)], 1)         # latent 0 = factor, latent 1 constant
    assert dm.mig(f, z) == pytest.approx(1.0)
    assert dm.mig(f, z[:, ::-1]) == pytest.approx(1.0)


def test_dci_gbt_estimator_agrees_on_perfect_code(codes):
    f, z = codes["factors"][:150, 4:5], codes["perfect"][:150]            # one 3-level factor
    g = dm.dci(f, z, estimator="gbt")
    assert g["disentanglement"] > 0.9 and g["informativeness"] > 0.9
    with pytest.raises(ValueError):
        dm.dci(f, z, estimator="lasso")


def test_gaussian_tc_known_answers():
    rng = np.random.default_rng(0)
    white = rng.normal(size=(5000, 3))
    white -= white.mean(0)
    white = white @ np.linalg.inv(np.linalg.cholesky(np.cov(white, rowvar=False))).T  # cov = I exactly
    assert dm.gaussian_tc(white) == pytest.approx(0.0, abs=1e-10)
    assert dm.gaussian_tc(rng.normal(size=(20000, 4))) < 0.01
    rho = 0.8
    sigma = np.array([[1.0, rho, 0.0], [rho, 1.0, 0.3], [0.0, 0.3, 2.0]])
    z = white @ np.linalg.cholesky(sigma).T                 # sample covariance = sigma exactly
    closed = 0.5 * (np.sum(np.log(np.diag(sigma))) - np.log(np.linalg.det(sigma)))
    assert dm.gaussian_tc(z) == pytest.approx(closed, rel=1e-9)
    two = white[:, :2] @ np.linalg.cholesky(sigma[:2, :2]).T
    assert dm.gaussian_tc(two) == pytest.approx(-0.5 * np.log(1 - rho ** 2), rel=1e-9)
    assert dm.gaussian_tc(np.stack([white[:, 0], white[:, 0]], 1)) == float("inf")


def test_active_units_and_torch_inputs(codes):
    mu = torch.zeros(100, 5)
    mu[:, 1] = torch.linspace(-1, 1, 100)
    mu[:, 3] = torch.linspace(0, 0.1, 100)                  # variance ~0.0009 < 0.01
    mu[:, 4] = torch.linspace(0, 1, 100)
    n, mask = dm.active_units(mu)
    assert n == 2 and mask.tolist() == [False, True, False, False, True]
    f, z = codes["factors"], codes["perfect"]
    a = dm.infomec(torch.as_tensor(f), torch.as_tensor(z))
    assert a["infom"] == pytest.approx(dm.infomec(f, z)["infom"])


def test_bad_input_is_rejected(codes):
    with pytest.raises(ValueError, match="rows"):
        dm.infomec(codes["factors"], codes["perfect"][:10])
    with pytest.raises(ValueError, match="integer"):
        dm.mig(codes["factors"] + 0.5, codes["perfect"])
    with pytest.raises(ValueError):
        dm.mig(codes["factors"], codes["perfect"][:, :1])


def test_degenerate_codes_score_the_floor_not_nan(codes):
    f = codes["factors"]
    none = dm.infomec(f, np.zeros((N, 3), int), discrete_z=True)
    assert none["n_active"] == 0 and none["infom"] == 0.0 and none["infoc"] == 0.0
    one = dm.infomec(f, np.stack([f[:, 0], np.zeros(N, int)], 1), discrete_z=True)
    assert one["n_active"] == 1 and one["infoc"] == 0.0 and np.isfinite(one["infom"])
