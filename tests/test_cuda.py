"""The GPU path: the clustering operation, the point-set blocks, the models and the training
engine on CUDA agree with the CPU. These tests need a CUDA device and are skipped without one;
`python -m cocs.gpucheck` times the `full` profile on the same machine."""

import json

import pytest
import timm
import torch

import cocs
from cocs import data as D
from cocs import train as T
from cocs.cluster import context_cluster
from cocs.dense import build_detector
from cocs.pointsets import farthest_point_sample, knn

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
CUDA = torch.device("cuda")


@pytest.fixture(autouse=True)
def exact_matmuls():
    """Compare in float32 without TF32, which rounds matrix products to 10 mantissa bits."""
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


@pytest.mark.parametrize("similarity", ["sigmoid", "cosine"])
def test_the_clustering_and_its_backward_agree_with_the_cpu(similarity):
    kw = dict(heads=2, proposal_w=2, proposal_h=2, fold_w=2, fold_h=2, similarity=similarity)
    x, v, w = torch.randn(2, 8, 8, 8), torch.randn(2, 8, 8, 6), torch.randn(2, 8, 8, 6)
    a, b = torch.tensor([1.3]), torch.tensor([0.2])
    results = []
    for device in ("cpu", CUDA):
        inputs = [t.to(device).requires_grad_() for t in (x, v, a, b)]
        res = context_cluster(*inputs[:2], sim_alpha=inputs[2], sim_beta=inputs[3], **kw)
        loss = (res.out * w.to(device)).sum()  # cosine leaves alpha, beta unused: zero gradients
        grads = torch.autograd.grad(loss, inputs, materialize_grads=True)
        results.append([res.out, res.assignment, *grads])
    for cpu, gpu in zip(*results, strict=True):
        torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-4, rtol=1e-4)


def test_the_hand_derived_backward_passes_gradcheck_on_cuda():
    f64 = dict(dtype=torch.float64, device=CUDA, requires_grad=True)
    x, v = torch.randn(1, 6, 5, 4, **f64), torch.randn(1, 6, 5, 6, **f64)
    a, b = torch.tensor([1.7], **f64), torch.tensor([-0.3], **f64)

    def f(x, v, a, b):
        kw = dict(heads=2, proposal_w=2, proposal_h=3, fold_w=2)
        return context_cluster(x, v, sim_alpha=a, sim_beta=b, **kw).out

    assert torch.autograd.gradcheck(f, (x, v, a, b))


def test_sampling_and_grouping_agree_with_the_cpu():
    xyz = torch.rand(3, 500, 3)
    idx = farthest_point_sample(xyz, 64, start=0)
    assert torch.equal(farthest_point_sample(xyz.to(CUDA), 64, start=0).cpu(), idx)
    query = xyz[:, :64]
    near_cpu = knn(query, xyz, 16)
    near_gpu = knn(query.to(CUDA), xyz.to(CUDA), 16).cpu()
    # ties aside, the same neighbours: compare the sets of distances, which ties share
    d = torch.cdist(query, xyz)
    torch.testing.assert_close(
        d.gather(2, near_gpu).sort(-1).values, d.gather(2, near_cpu).sort(-1).values
    )


@pytest.mark.parametrize(
    "name, shape",
    [
        ("coc_cifar", (2, 3, 32, 32)),
        ("pointmlp_elite_coc", (2, 1024, 3)),
        ("coc_points", (2, 1024, 3)),
    ],
)
def test_models_compute_the_same_function_on_cuda(name, shape):
    torch.manual_seed(0)
    model = cocs.create_model(name, num_classes=10).eval()
    x = torch.randn(shape)
    with torch.no_grad():
        cpu = model(x)
        gpu = model.to(CUDA)(x.to(CUDA)).cpu()
    torch.testing.assert_close(gpu, cpu, atol=2e-3, rtol=2e-3)


@pytest.mark.parametrize("kind", ["faster", "mask"])
def test_detectors_train_and_predict_on_cuda(kind):
    backbone = timm.create_model("coc_micro", features_only=True)
    model = build_detector(backbone, num_classes=3, kind=kind, min_size=64, max_size=96).to(CUDA)
    images = [torch.rand(3, 64, 80, device=CUDA)]
    target = {"boxes": torch.tensor([[4.0, 6.0, 40.0, 50.0]], device=CUDA),
              "labels": torch.tensor([1], device=CUDA)}  # fmt: skip
    if kind == "mask":
        target["masks"] = torch.zeros(1, 64, 80, dtype=torch.uint8, device=CUDA)
        target["masks"][0, 6:50, 4:40] = 1
    sum(model.train()(images, [target]).values()).backward()
    (out,) = model.eval()(images)
    assert {"boxes", "labels", "scores"} <= set(out) and out["boxes"].device.type == "cuda"


@pytest.mark.parametrize("compiled", [False, True])
def test_the_engine_trains_resumes_and_records_on_cuda(tmp_path, monkeypatch, compiled):
    monkeypatch.setenv("COCS_DATA", str(tmp_path / "cache"))
    tree = D.write_synthetic_folder(tmp_path / "tree", per_class={"train": 8, "val": 4})
    cfg = dict(
        model="coc_micro", dataset="folder", data_path=str(tree), download=False, img_size=16,
        epochs=2, batch_size=8, warmup_epochs=1, mixup=0.4, randaugment="rand-m9-mstd0.5-inc1",
        ema=0.9, device="cuda", amp="auto", torch_compile=compiled, num_workers=2,
        progress=False, out_dir=str(tmp_path / "results" / "run"), save_predictions=True,
    )  # fmt: skip
    first = T.train(cfg | {"stop_after_epochs": 1})
    assert first["epochs_done"] == 1 and not first["complete"]
    assert first["autocast"] == ("bfloat16" if torch.cuda.is_bf16_supported() else "float16")
    done = T.train(cfg)  # resumes from the checkpoint of epoch 1
    assert done["complete"] and done["epochs_done"] == 2
    assert [r["epoch"] for r in done["metrics"]] == [1, 2]
    assert done["metrics"][0] == first["metrics"][0]  # the resumed run kept epoch 1's row
    meta = json.loads((tmp_path / "results" / "run" / "metrics.json").read_text())
    built = cocs.create_model("coc_micro", num_classes=3)
    assert meta["fingerprint"] == cocs.model_fingerprint(built)
    hardware = meta["environment"]["hardware"]
    assert hardware["device"].startswith("cuda") and hardware["gpus"]
