"""CPU/CUDA agreement of the core (run by ``make gpu-check`` on a machine with a GPU).

Every test here is marked ``cuda`` and skipped when ``torch.cuda.is_available()`` is False, so the
suite passes on CPU-only machines; ``pytest -m cuda`` selects them. They need torch, NumPy and
SciPy only (no nibabel, SimpleITK or nilearn: the device image may lack them). Tolerances are
float32 ones: CUDA and CPU kernels sum in different orders, and CUDA's backward passes use
atomic adds, so results agree closely but not bit for bit.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("scipy")

from helpers import quick_settings  # noqa: E402

from inrreg_pipeline.core.hash_encoding import HashEncoding  # noqa: E402
from inrreg_pipeline.core.losses import lncc_map, mutual_information, ncc, ncc_lncc_loss  # noqa: E402
from inrreg_pipeline.core.registration import register  # noqa: E402
from inrreg_pipeline.core.space import DeviceImage, apply_affine, sample_labels  # noqa: E402
from inrreg_pipeline.synthetic import deform, phantom, random_deformation, sample_image  # noqa: E402

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available")]

CPU = torch.device("cpu")
CUDA = torch.device("cuda")


def oblique_affine(rng: np.random.Generator) -> np.ndarray:
    """voxel -> RAS: a random rotation times spacings of 0.8-2.5 mm, origin away from 0."""
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    affine = np.eye(4)
    affine[:3, :3] = q @ np.diag(rng.uniform(0.8, 2.5, 3))
    affine[:3, 3] = rng.normal(scale=30.0, size=3)
    return affine


def test_world_point_sampling_agrees_on_cpu_and_cuda():
    rng = np.random.default_rng(0)
    affine = oblique_affine(rng)
    shape = (17, 19, 13)
    data = rng.normal(size=shape).astype(np.float32)
    field = rng.normal(size=shape + (3,)).astype(np.float32)
    # points over and beyond the grid (outside: 0), in world mm
    idx = rng.uniform(-2.0, np.array(shape) + 1.0, size=(20000, 3))
    points = torch.as_tensor(apply_affine(affine, idx), dtype=torch.float32)
    for values, vector in ((data, False), (field, True)):
        on_cpu = DeviceImage(values, affine, CPU, vector=vector).sample(points)
        on_cuda = DeviceImage(values, affine, CUDA, vector=vector).sample(points.to(CUDA)).cpu()
        assert on_cpu.abs().max() > 0.5
        torch.testing.assert_close(on_cuda, on_cpu, atol=2e-5, rtol=1e-5)
        near = DeviceImage(values, affine, CUDA, vector=vector).sample(points.to(CUDA), mode="nearest").cpu()
        torch.testing.assert_close(near, DeviceImage(values, affine, CPU, vector=vector).sample(points, mode="nearest"))


def test_similarity_losses_and_their_gradients_agree_on_cpu_and_cuda():
    gen = torch.Generator().manual_seed(1)
    fixed = torch.rand(4, 1, 12, 12, 12, generator=gen)
    warped = (0.7 * fixed + 0.3 * torch.rand(4, 1, 12, 12, 12, generator=gen)).clamp(0, 1)
    losses = {"ncc": lambda a, b: ncc(a, b), "lncc": lambda a, b: lncc_map(a, b, 5).mean(),
              "ncc+lncc": lambda a, b: ncc_lncc_loss(a, b, 5), "mi": lambda a, b: mutual_information(a, b, 32)}
    for name, loss in losses.items():
        results = []
        for device in (CPU, CUDA):
            w = warped.to(device).requires_grad_(True)
            value = loss(fixed.to(device), w)
            (grad,) = torch.autograd.grad(value, w)
            results.append((value.detach().cpu(), grad.cpu()))
        (v_cpu, g_cpu), (v_cuda, g_cuda) = results
        assert abs(float(v_cpu)) > 1e-3, name
        torch.testing.assert_close(v_cuda, v_cpu, atol=1e-5, rtol=1e-4, msg=name)
        torch.testing.assert_close(g_cuda, g_cpu, atol=1e-6, rtol=1e-3, msg=name)


def test_hash_encoding_torch_backend_agrees_on_cpu_and_cuda():
    torch.manual_seed(2)
    cpu = HashEncoding(3, n_levels=8, log2_table_size=14, backend="torch", device=CPU)
    with torch.no_grad():
        cpu.grid.params.uniform_(-1.0, 1.0)
    cuda = HashEncoding(3, n_levels=8, log2_table_size=14, backend="torch", device=CUDA).to(CUDA)
    cuda.load_state_dict(cpu.state_dict())
    x = torch.rand(50000, 3, generator=torch.Generator().manual_seed(3))
    out_cpu, out_cuda = cpu(x), cuda(x.to(CUDA))
    torch.testing.assert_close(out_cuda.cpu(), out_cpu, atol=1e-5, rtol=1e-5)
    (g_cpu,) = torch.autograd.grad((out_cpu ** 2).sum(), cpu.grid.params)
    (g_cuda,) = torch.autograd.grad((out_cuda ** 2).sum(), cuda.grid.params)
    assert g_cpu.abs().max() > 0
    torch.testing.assert_close(g_cuda.cpu(), g_cpu, atol=1e-3, rtol=1e-4)


def _pair(seed: int = 0):
    """A 4 mm phantom (50 x 50 x 40 voxels), a moving image and labels under a known smooth map."""
    fixed, labels = phantom((50, 50, 40), 4.0)
    psi = random_deformation(fixed, amplitude_mm=6.0, seed=seed)
    moving = deform(fixed, psi)
    points = fixed.world_grid()
    moving_labels = np.rint(sample_image(fixed.with_data(labels.astype(np.float32)), psi(points), order=0))
    return fixed, labels, moving, moving_labels.astype(np.uint8)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    """Mean Dice over the labels of ``a`` (0 excluded)."""
    values = [2.0 * np.sum((a == k) & (b == k)) / (np.sum(a == k) + np.sum(b == k)) for k in np.unique(a) if k]
    return float(np.mean(values))


def _warped_labels(result, fixed, moving, moving_labels) -> np.ndarray:
    grid = fixed.world_grid()
    return sample_labels(moving_labels, moving.affine, apply_affine(result.affine, grid + result.displacement), CPU)


def test_short_registration_reaches_the_cpu_dice_on_cuda():
    fixed, labels, moving, moving_labels = _pair()
    settings = quick_settings(iterations=100)
    dice = {"before": _dice(labels, moving_labels)}
    for device in (CPU, CUDA):
        result = register(fixed, moving, settings, device, seed=0)
        dice[device.type] = _dice(labels, _warped_labels(result, fixed, moving, moving_labels))
    assert dice["cpu"] > dice["before"] + 0.05, dice
    assert dice["cuda"] > dice["before"] + 0.05, dice
    assert abs(dice["cuda"] - dice["cpu"]) < 0.03, dice


def test_same_seed_same_result_on_cuda_within_tolerance():
    fixed, _labels, moving, _ = _pair(seed=1)
    settings = quick_settings(iterations=60)
    a = register(fixed, moving, settings, CUDA, seed=11)
    b = register(fixed, moving, settings, CUDA, seed=11)
    c = register(fixed, moving, settings, CUDA, seed=12)
    same = np.abs(a.displacement - b.displacement).max()
    other = np.abs(a.displacement - c.displacement).max()
    # atomic adds in CUDA backward passes reorder float sums: not bit for bit, but far below a voxel
    assert same < 0.05, same
    assert other > 10 * max(same, 1e-4), (same, other)
    np.testing.assert_allclose(a.affine, b.affine, atol=1e-3)
