"""Image and code metrics. Images are float in [0, 1], [..., 3, H, W]; metrics are per frame."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
MOVING_THRESHOLD = 0.5 / 255  # a pixel moves when a channel changes by at least one uint8 level


def to_unit(frames: torch.Tensor) -> torch.Tensor:
    """Model pixels in [-1, 1] -> [0, 1], clamped (predictions may overshoot)."""
    return ((frames + 1) / 2).clamp(0, 1)


def mse_per_frame(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    # [..., 3, H, W] -> [...]
    return (pred - target).pow(2).flatten(-3).mean(-1)


def psnr_from_mse(mse: torch.Tensor) -> torch.Tensor:
    # peak 1.0; an exact match is capped at 100 dB rather than inf so means stay finite
    return 10 * torch.log10(1.0 / mse.clamp_min(1e-10))


def psnr_per_frame(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return psnr_from_mse(mse_per_frame(pred, target))


def moving_pixels(frames: torch.Tensor) -> torch.Tensor:
    # [..., T, 3, H, W] -> bool [..., T-1, 1, H, W]: pixels of frames 1..T-1 that differ from the frame before
    change = (frames[..., 1:, :, :, :] - frames[..., :-1, :, :, :]).abs().amax(dim=-3, keepdim=True)
    return change > MOVING_THRESHOLD


def moving_weighted_mean(errors: torch.Tensor, moving: torch.Tensor, moving_weight: float) -> torch.Tensor:
    """The mean of `errors` [..., C, H, W] with the `moving` pixels [..., 1, H, W] weighing 1 + moving_weight: a
    few sprite pixels on a static background are otherwise lost in the plain mean."""
    weight = 1 + moving_weight * moving.float()  # [..., 1, H, W]
    return (errors * weight).mean() / weight.mean()


def moving_squared_errors(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    # [..., T, 3, H, W] -> [M]: squared errors of frames 1..T-1, every channel of the pixels that move in `target`
    moving = moving_pixels(target).expand_as(target[..., 1:, :, :, :])
    return (pred[..., 1:, :, :, :] - target[..., 1:, :, :, :]).pow(2)[moving]


def moving_psnr(pred: torch.Tensor, target: torch.Tensor) -> float:
    """PSNR over the pixels that change between consecutive ground-truth frames, pooled over all of them.

    The moving sprites are a few pixels on a static background, so a PSNR averaged over every
    pixel barely notices a model that erases them; this one scores only them.  NaN if nothing moves.
    """
    return psnr_from_mse(moving_squared_errors(pred, target).mean()).item()


def _gaussian_window(size: int, sigma: float, device: torch.device | str = "cpu") -> torch.Tensor:
    coords = torch.arange(size, dtype=torch.float32, device=device) - (size - 1) / 2
    g = torch.exp(-coords.pow(2) / (2 * sigma**2))
    g = g / g.sum()
    return g[:, None] * g[None, :]  # [size, size]


def ssim_per_frame(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """SSIM with an 11x11 Gaussian window (sigma 1.5) over the valid region, averaged over channels."""
    lead = pred.shape[:-3]
    x = pred.reshape(-1, *pred.shape[-3:])  # [N, 3, H, W]
    y = target.reshape(-1, *target.shape[-3:])
    size = min(SSIM_WINDOW, x.shape[-1], x.shape[-2])  # frames smaller than the window use a smaller one
    window = _gaussian_window(size, SSIM_SIGMA, x.device).to(x.dtype).expand(3, 1, size, size)
    blur = lambda img: F.conv2d(img, window, groups=3)  # noqa: E731
    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = 0.01**2, 0.03**2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return ssim_map.flatten(1).mean(-1).reshape(lead)


def codebook_stats(indices: torch.Tensor, codebook_size: int) -> tuple[float, float]:
    """(fraction of codes used, perplexity of the code distribution)."""
    counts = torch.bincount(indices.flatten(), minlength=codebook_size).double()
    probs = counts / counts.sum()
    nonzero = probs[probs > 0]
    perplexity = torch.exp(-(nonzero * nonzero.log()).sum()).item()
    return (counts > 0).float().mean().item(), perplexity


def _entropy(counts: np.ndarray) -> float:
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def action_agreement(latent: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """(normalised mutual information, majority-label accuracy) of latent vs ground-truth actions.

    NMI uses the arithmetic mean of the two entropies (0 when either labelling is constant).
    Majority accuracy maps every latent code to its most frequent true action.
    """
    latent, truth = np.asarray(latent).ravel(), np.asarray(truth).ravel()
    _, latent_ids = np.unique(latent, return_inverse=True)
    _, truth_ids = np.unique(truth, return_inverse=True)
    table = np.zeros((latent_ids.max() + 1, truth_ids.max() + 1))
    np.add.at(table, (latent_ids, truth_ids), 1)
    h_latent, h_truth = _entropy(table.sum(1)), _entropy(table.sum(0))
    joint = table / table.sum()
    outer = joint.sum(1, keepdims=True) * joint.sum(0, keepdims=True)
    nz = joint > 0
    mutual = float((joint[nz] * np.log(joint[nz] / outer[nz])).sum())
    denominator = (h_latent + h_truth) / 2
    nmi = mutual / denominator if denominator > 0 else 0.0
    majority = table.max(1).sum() / table.sum()
    return nmi, float(majority)
