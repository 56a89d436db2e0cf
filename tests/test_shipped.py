"""The weights that ship in cocs/weights are the runs they say they are: loaded offline with
``timm.create_model(name, pretrained=True)``, they predict on test images what their run
predicted there (the run's committed predictions.npz), and their manifest matches its record."""

import json

import numpy as np
import pytest
import timm
import torch

import cocs  # noqa: F401  (registers the models)
from cocs import data as D
from cocs import weights as W
from cocs.config import REPO_ROOT, TrainConfig
from cocs.train import build_data

SUBSET = 200  # test images checked per model: the first ones of the test split, in order


def _shipped() -> list:
    names = sorted(W.manifest())
    return names or [pytest.param(None, marks=pytest.mark.skip(reason="no weights ship yet"))]


@pytest.mark.parametrize("name", _shipped())
def test_shipped_weights_predict_what_their_run_predicted(name):
    entry = W.shipped(name)
    run = REPO_ROOT / entry["source"]
    meta = json.loads((run / "metrics.json").read_text())
    assert meta["complete"] and meta["fingerprint"] == entry["fingerprint"], entry["source"]
    assert meta["final"]["test_acc"] == pytest.approx(entry["metrics"]["test_acc"])
    with np.load(run / "predictions.npz") as f:
        label, pred = f["label"][:SUBSET], f["pred"][:SUBSET]

    model = timm.create_model(name, pretrained=True).eval()
    cfg = TrainConfig.from_dict(meta["config"] | {"progress": False, "num_threads": 0})
    bundle = build_data(cfg)
    assert len(bundle.test) == meta["test_images"], "the run's whole test split"
    x, y = bundle.test.__getitems__(list(range(SUBSET)))  # (N, 3, H, W), (N,)
    with torch.no_grad():
        now = model(D.normalize(x, bundle.mean, bundle.std)).argmax(1).numpy()
    assert (y.numpy() == label).all(), "the test split is in the order the run predicted it"
    # float16 storage can flip a prediction that sat on a boundary, rarely
    agree = float((now == pred).mean())
    assert agree >= 0.97, f"{name}: {agree:.1%} of the run's predictions reproduced"
    acc_now, acc_run = 100 * (now == label).mean(), 100 * (pred == label).mean()
    assert abs(acc_now - acc_run) <= 2.0, (name, acc_now, acc_run)
