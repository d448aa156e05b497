"""Factor tests of the latent-feature generator: each knob does what it says."""
import numpy as np
import pytest
import torch

from replibook.data.procedural import Bundle, latent_features as LF


def coords(b, u):
    return (b.x.double() @ u.double()), (b.extra["x_pos"].double() @ u.double())


def test_directions_orthonormal_and_seeded():
    u = LF.directions(50, 5, seed=3)
    assert u.shape == (50, 5)
    assert torch.allclose(u.T @ u, torch.eye(5), atol=1e-5)
    assert torch.equal(u, LF.directions(50, 5, seed=3))
    assert not torch.allclose(u, LF.directions(50, 5, seed=4))
    with pytest.raises(ValueError):
        LF.directions(3, 5)


def test_bundle_shapes_and_determinism():
    b = LF.make(300, seed=1)
    assert isinstance(b, Bundle) and b.x.shape == (300, 50) and b.extra["x_pos"].shape == (300, 50)
    assert b.factors.shape == (300, 5) and b.levels == [2] * 5
    assert torch.equal(b.factors, (b.extra["z"] > 0).long())
    again = LF.make(300, seed=1)
    assert torch.equal(b.x, again.x) and torch.equal(b.extra["x_pos"], again.extra["x_pos"])
    assert not torch.equal(b.x, LF.make(300, seed=2).x)


def test_strength_sets_the_coordinate_along_each_direction():
    s = (3.0, 2.0, 1.5, 1.0, 0.5)
    b = LF.make(2000, seed=0, strengths=s, noise=0.0)
    a, _ = coords(b, LF.directions(50, 5, 0))
    # noiseless: the coordinate along u_k is exactly s_k z_k
    assert torch.allclose(a, b.extra["z"].double() * torch.tensor(s, dtype=torch.float64), atol=1e-5)


def test_noise_has_the_requested_std_off_the_feature_subspace():
    b = LF.make(4000, seed=0, noise=0.7)
    u = LF.directions(50, 5, 0).double()
    resid = b.x.double() - (b.x.double() @ u) @ u.T
    assert resid.pow(2).sum(1).mean().item() / 45 == pytest.approx(0.49, rel=0.05)


def test_disruption_probability_controls_cross_view_agreement():
    p = [0.0, 0.3, 0.6, 1.0, 0.0]
    b = LF.make(20000, seed=0, disrupt=p, noise=0.0)
    a, ap = coords(b, LF.directions(50, 5, 0))
    corr = ((a * ap).mean(0) / (a.pow(2).mean(0))).numpy()
    # E[z z+] = 1 - p (a re-drawn sign agrees half the time)
    assert np.allclose(corr, 1 - np.array(p), atol=0.03)
    # the anchor's latents follow z exactly; disruption touches only the view
    assert torch.allclose(a[:, 3], b.extra["z"][:, 3].double(), atol=1e-5)


def test_magnitude_only_feature_is_invisible_linearly_but_present_in_the_magnitude():
    b = LF.make(20000, seed=0, magnitude_only=[3], noise=0.0)
    a, ap = coords(b, LF.directions(50, 5, 0))
    m = b.extra["z"][:, 3].double()
    assert set(m.unique().tolist()) == {0.0, 1.0}
    assert abs(float((a[:, 3] * (m - m.mean())).mean())) < 0.02       # no linear correlation
    assert torch.allclose(a[:, 3].abs(), m, atol=1e-5)                 # |u^T x| = s m
    assert torch.allclose(ap[:, 3].abs(), m, atol=1e-5)                # kept by the view
    assert abs(float((a[:, 3] * ap[:, 3]).mean())) < 0.03               # random sign per view


def test_bad_arguments():
    with pytest.raises(ValueError):
        LF.make(10, 0, disrupt=[0.5, 2.0, 0, 0, 0])
    with pytest.raises(ValueError):
        LF.make(10, 0, disrupt=[0.5])
    with pytest.raises(ValueError):
        LF.make(10, 0, magnitude_only=[7])
