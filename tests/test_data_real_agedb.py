"""AgeDB-DIR / IMDB-WIKI-DIR loaders on tiny fake copies in the DIR csv + image layout."""
import numpy as np
import pytest
import torch
from PIL import Image

from replibook.data import real_agedb as R
from replibook.errors import DatasetMissing


def _fake(root, csv_name="agedb.csv", sub="AgeDB", n=6):
    (root / sub).mkdir(parents=True)
    rows = []
    for i in range(n):
        img = np.zeros((20, 30, 3), dtype=np.uint8)
        img[..., i % 3] = 40 * i                            # a distinct colour per image
        name = f"{sub}/{i}_face.jpg"
        Image.fromarray(img).save(root / name, quality=100)
        rows.append(f"{20 + i},{name},{['train', 'train', 'train', 'val', 'test', 'test'][i]}")
    (root / csv_name).write_text("age,path,split\n" + "\n".join(rows) + "\n")


def test_loads_split_with_ages_and_images(tmp_path):
    _fake(tmp_path)
    tr = R.dir_split("agedb", "train", root=tmp_path, size=16)
    assert tr.x.shape == (3, 3, 16, 16) and tr.x.dtype == torch.float32
    assert 0 <= float(tr.x.min()) and float(tr.x.max()) <= 1
    assert tr.y.tolist() == [20.0, 21.0, 22.0]
    # image 2 is blue-only with value 80/255 (JPEG: approximately)
    assert abs(float(tr.x[2, 2].mean()) - 80 / 255) < 0.02 and float(tr.x[2, :2].max()) < 0.05
    te = R.dir_split("agedb", "test", root=tmp_path, size=16)
    assert te.y.tolist() == [24.0, 25.0] and te.card()["n"] == 2
    sub = R.dir_split("agedb", "train", root=tmp_path, size=8, limit=2, seed=0)
    assert len(sub.y) == 2 and set(sub.y.tolist()) <= {20.0, 21.0, 22.0}


def test_reads_from_replibook_data(tmp_path, monkeypatch):
    _fake(tmp_path / "imdb-wiki-dir", csv_name="imdb_wiki.csv", sub="wiki_crop", n=6)
    monkeypatch.setenv("REPLIBOOK_DATA", str(tmp_path))
    va = R.dir_split("imdb_wiki", "val", size=8)
    assert va.y.tolist() == [23.0]


def test_clear_errors(tmp_path, monkeypatch):
    monkeypatch.delenv("REPLIBOOK_DATA", raising=False)
    with pytest.raises(DatasetMissing, match="REPLIBOOK_DATA"):
        R.dir_split("agedb")
    with pytest.raises(DatasetMissing, match="agedb.csv"):
        R.dir_split("agedb", root=tmp_path)
    _fake(tmp_path)
    (tmp_path / "AgeDB" / "0_face.jpg").unlink()
    with pytest.raises(DatasetMissing, match="image missing"):
        R.dir_split("agedb", "train", root=tmp_path)
    with pytest.raises(ValueError):
        R.dir_split("agedb", "holdout", root=tmp_path)
    with pytest.raises(ValueError):
        R.dir_split("utkface", root=tmp_path)
    (tmp_path / "agedb.csv").write_text("age,file\n1,a.jpg\n")
    with pytest.raises(ValueError, match="columns"):
        R.dir_split("agedb", root=tmp_path)
