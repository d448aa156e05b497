"""Office-Home / VisDA-2017 folder loaders on tiny fake copies in the published layout."""
import numpy as np
import pytest
import torch
from PIL import Image

from replibook.data import real_domains as R
from replibook.errors import DatasetMissing


def fake_folder(base, classes, per_class, ext=".jpg", size=(20, 12)):
    for k, name in enumerate(classes):
        d = base / name
        d.mkdir(parents=True)
        for i in range(per_class):
            arr = np.full((size[1], size[0], 3), 20 * k + i, dtype=np.uint8)
            Image.fromarray(arr).save(d / f"{i:03d}{ext}", quality=100 if ext == ".jpg" else None)
        (d / "notes.txt").write_text("not an image")


def test_office_home_layout(tmp_path):
    fake_folder(tmp_path / "OfficeHome" / "Clipart", ["Alarm_Clock", "Bike", "Candles"], 3)
    x, y, classes = R.office_home("Clipart", size=8, root=tmp_path)
    assert classes == ["Alarm_Clock", "Bike", "Candles"]
    assert x.shape == (9, 3, 8, 8) and x.dtype == torch.uint8
    assert y.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    # constant images keep their value through resize + crop (JPEG at quality 100: within 2)
    assert abs(int(x[4].float().mean()) - (20 * 1 + 1)) <= 2


def test_visda_layout_png_subset_and_determinism(tmp_path, monkeypatch):
    fake_folder(tmp_path / "visda-2017" / "validation", ["aeroplane", "bicycle"], 5, ext=".png")
    monkeypatch.setenv("REPLIBOOK_DATA", str(tmp_path))
    x1, y1, _ = R.visda2017("validation", size=6, max_per_class=2, seed=1)
    x2, y2, _ = R.visda2017("validation", size=6, max_per_class=2, seed=1)
    assert x1.shape == (4, 3, 6, 6) and torch.equal(x1, x2) and torch.equal(y1, y2)
    assert torch.bincount(y1).tolist() == [2, 2]


def test_missing_data_names_dataset_and_variable(tmp_path, monkeypatch):
    with pytest.raises(DatasetMissing, match="VisDA-2017.*REPLIBOOK_DATA"):
        R.visda2017("train", root=tmp_path)
    monkeypatch.delenv("REPLIBOOK_DATA", raising=False)
    with pytest.raises(DatasetMissing, match="Office-Home.*REPLIBOOK_DATA"):
        R.office_home("Art")
    with pytest.raises(ValueError):
        R.office_home("Sketch", root=tmp_path)
