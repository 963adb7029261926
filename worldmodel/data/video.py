"""Video data: the in-memory form, the HDF5 file format, and fixed-length training windows.

File format (one HDF5 file per dataset):
    frames          uint8 [N, H, W, 3]   required; chunked one frame per chunk
    actions         int64 [N]            optional; actions[i] takes frame i to frame i+1
    episode_starts  int64 [n_episodes]   optional; first frame of each episode (default: [0])
    attrs["n_actions"]                   optional; number of distinct ground-truth actions
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import torch
import torch.nn.functional as F

from worldmodel.errors import WorldbenchError
from worldmodel.files import write_atomic


@dataclass
class VideoData:
    frames: np.ndarray  # uint8 [N, H, W, 3]
    actions: np.ndarray | None  # int64 [N]; actions[i] takes frame i to i+1; 0 at each episode's last frame
    episode_starts: np.ndarray  # int64 [n_episodes]; starts with 0, strictly increasing
    n_actions: int | None = None  # number of distinct ground-truth actions, when known

    def __post_init__(self) -> None:
        self.episode_starts = np.asarray(self.episode_starts)
        if self.actions is not None:
            self.actions = np.asarray(self.actions)
        check_video(self.frames, self.actions, self.episode_starts, self.n_actions, where="VideoData")
        self.episode_starts = self.episode_starts.astype(np.int64, copy=False)
        if self.actions is not None:
            self.actions = self.actions.astype(np.int64, copy=False)

    @property
    def n_frames(self) -> int:
        return len(self.frames)

    @property
    def n_episodes(self) -> int:
        return len(self.episode_starts)

    def episode_bounds(self) -> np.ndarray:
        """int64 [n_episodes, 2]: (first frame, one past the last frame) of each episode."""
        ends = np.append(self.episode_starts[1:], self.n_frames)
        return np.stack([self.episode_starts, ends], axis=1)


def check_frames_layout(dtype: np.dtype, shape: tuple[int, ...], where: str) -> None:
    """Frames must be uint8 [N, H, W, 3]; checked from metadata so a bad file fails before it is read."""
    if dtype != np.uint8:
        raise WorldbenchError(
            f"{where}: 'frames' has dtype {dtype}, must be uint8; store RGB frames as 0..255 uint8"
        )
    if len(shape) != 4 or shape[-1] != 3 or min(shape[1:3]) < 1:
        raise WorldbenchError(
            f"{where}: 'frames' has shape {list(shape)}, must be [N, H, W, 3] with H, W >= 1; "
            "store RGB frames channels-last"
        )
    if shape[1] != shape[2]:  # resizing would distort them silently
        raise WorldbenchError(
            f"{where}: frames are {shape[1]}x{shape[2]} (height x width), the model needs square frames; "
            f"crop or pad them to {min(shape[1:3])}x{min(shape[1:3])} or {max(shape[1:3])}x{max(shape[1:3])}"
        )


def check_fits_in_memory(shape: tuple[int, ...], where: str) -> None:
    """A file's frames are read whole: refuse, before reading, more than this machine's memory holds (a sparse
    file can declare terabytes in a few kilobytes)."""
    needed = int(np.prod(shape, dtype=np.float64))  # uint8: one byte per value
    try:
        memory = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):  # not Linux: let the read itself fail
        return
    if needed > memory:
        raise WorldbenchError(
            f"{where}: 'frames' {list(shape)} takes {needed / 2**30:,.1f} GiB, more than this machine's "
            f"{memory / 2**30:,.1f} GiB of memory; store fewer or smaller frames"
        )


def check_video(
    frames: np.ndarray,
    actions: np.ndarray | None,
    episode_starts: np.ndarray,
    n_actions: int | None,
    where: str,
) -> None:
    """Raise a one-line WorldbenchError, prefixed by `where`, if the arrays do not form a valid video."""
    check_frames_layout(frames.dtype, frames.shape, where)
    n_frames = len(frames)
    if n_frames == 0:
        raise WorldbenchError(f"{where}: 'frames' holds no frames; record at least one episode")
    if actions is not None:
        if actions.ndim != 1 or len(actions) != n_frames:
            raise WorldbenchError(
                f"{where}: 'actions' has shape {list(actions.shape)}, must be [{n_frames}] (one per frame); "
                "pad each episode's last frame with action 0"
            )
        if not np.issubdtype(actions.dtype, np.integer):
            raise WorldbenchError(f"{where}: 'actions' has dtype {actions.dtype}, must be an integer type")
        if n_actions is not None and (actions.min() < 0 or actions.max() >= n_actions):
            raise WorldbenchError(
                f"{where}: 'actions' range from {actions.min()} to {actions.max()}, "
                f"must lie in [0, {n_actions}) for n_actions={n_actions}; fix the actions or n_actions"
            )
    starts = episode_starts
    if (
        starts.ndim != 1
        or len(starts) == 0
        or not np.issubdtype(starts.dtype, np.integer)
        or starts[0] != 0
        or np.any(np.diff(starts) <= 0)
        or starts[-1] >= n_frames
    ):
        raise WorldbenchError(
            f"{where}: 'episode_starts' must be integers starting at 0, strictly increasing and below "
            f"the {n_frames} frames; got {_preview(starts)}"
        )


def _preview(values: np.ndarray, limit: int = 8) -> str:
    """Short rendering of a possibly long array for one-line messages."""
    flat = np.asarray(values).ravel()
    shown = ", ".join(str(v) for v in flat[:limit])
    return f"[{shown}{', ...' if len(flat) > limit else ''}]"


# -----------------------------------------------------------------------------
# HDF5 files


def save_hdf5(data: VideoData, path: str | os.PathLike) -> None:
    """Write `data` to `path` atomically (worldmodel.files.write_atomic)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)

    def write(tmp: Path) -> None:
        with h5py.File(tmp, "w") as f:
            frames = data.frames  # [N, H, W, 3]
            f.create_dataset(
                "frames", data=frames, chunks=(1, *frames.shape[1:]), compression="gzip", compression_opts=1
            )
            if data.actions is not None:
                f.create_dataset("actions", data=data.actions.astype(np.int64))
            f.create_dataset("episode_starts", data=data.episode_starts.astype(np.int64))
            if data.n_actions is not None:
                f.attrs["n_actions"] = int(data.n_actions)

    write_atomic(path, write)


def load_hdf5(
    path: str | os.PathLike, frame_size: int | None = None, dataset_name: str | None = None
) -> VideoData:
    """Read a video file; resize frames to frame_size x frame_size when given and different.

    Files with only a `frames` dataset (e.g. other projects' recordings) load as one
    episode with unknown actions. `dataset_name` only improves the error messages.
    """
    where = f"dataset file '{path}'"
    section = f"[datasets.{dataset_name}]" if dataset_name else "the [datasets.*] config"
    if not os.path.exists(path):
        raise WorldbenchError(f"{where} does not exist; check the path in {section} or generate it")
    try:
        if os.path.isdir(path) or not h5py.is_hdf5(path):
            raise WorldbenchError(
                f"{where} is not an HDF5 file; point {section} at an .h5 file with a uint8 'frames' "
                "dataset [N, H, W, 3], or delete it to regenerate"
            )
        with h5py.File(path, "r") as f:
            if not isinstance(f.get("frames"), h5py.Dataset):
                present = ", ".join(sorted(f.keys())) or "none"
                raise WorldbenchError(
                    f"{where} has no 'frames' dataset (it has: {present}); "
                    "store the video as a uint8 'frames' dataset [N, H, W, 3]"
                )
            check_frames_layout(f["frames"].dtype, f["frames"].shape, where)
            check_fits_in_memory(f["frames"].shape, where)
            frames = f["frames"][()]  # [N, H, W, 3]
            actions = f["actions"][()] if "actions" in f else None  # [N]
            starts = f["episode_starts"][()] if "episode_starts" in f else np.zeros(1, np.int64)
            n_actions = int(f.attrs["n_actions"]) if "n_actions" in f.attrs else None
    except WorldbenchError:
        raise
    except (OSError, KeyError, ValueError, TypeError, MemoryError) as err:
        first_line = str(err).splitlines()[0] if str(err) else type(err).__name__
        message = f"{where} could not be read ({first_line}); regenerate or re-export it"
        raise WorldbenchError(message) from None

    check_video(frames, actions, np.asarray(starts), n_actions, where)
    if actions is not None:
        actions = actions.astype(np.int64)
        if n_actions is None:  # infer from the labels present
            n_actions = int(actions.max()) + 1
    starts = np.asarray(starts, dtype=np.int64)

    if frame_size is not None and frames.shape[1:3] != (frame_size, frame_size):
        frames = resize_frames(frames, frame_size)
    return VideoData(frames=frames, actions=actions, episode_starts=starts, n_actions=n_actions)


def resize_frames(frames: np.ndarray, size: int, batch: int = 1024) -> np.ndarray:
    """Resize uint8 [N, H, W, 3] frames to [N, size, size, 3].

    Shrinking averages the covered area (exact block means for integer factors);
    growing or mixed changes use bilinear interpolation.
    """
    if size < 1:
        raise WorldbenchError(f"frame_size must be >= 1, got {size}")
    height, width = frames.shape[1:3]
    mode = "area" if (size <= height and size <= width) else "bilinear"
    out = np.empty((len(frames), size, size, 3), dtype=np.uint8)
    for lo in range(0, len(frames), batch):  # batches bound the float32 copy's memory
        chunk = torch.from_numpy(frames[lo : lo + batch]).permute(0, 3, 1, 2).float()  # [B, 3, H, W]
        kwargs = {} if mode == "area" else {"align_corners": False}
        resized = F.interpolate(chunk, size=(size, size), mode=mode, **kwargs)  # [B, 3, size, size]
        out[lo : lo + batch] = resized.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return out


# -----------------------------------------------------------------------------
# training windows


def split_segments(data: VideoData, split: str, val_fraction: float) -> np.ndarray:
    """Frame ranges [K, 2] (start, end) belonging to `split`.

    Split by episode: the last max(1, round(val_fraction * n_episodes)) episodes are val
    (at least one episode stays train). A single episode is split by time instead.
    """
    bounds = data.episode_bounds()  # [n_episodes, 2]
    if len(bounds) == 1:
        start, end = bounds[0]
        n_val = min(max(1, round(val_fraction * (end - start))), end - start - 1)
        cut = end - n_val
        return np.array([[start, cut]] if split == "train" else [[cut, end]], dtype=np.int64)
    n_val = min(max(1, round(val_fraction * len(bounds))), len(bounds) - 1)
    return bounds[: len(bounds) - n_val] if split == "train" else bounds[len(bounds) - n_val :]


class VideoWindows:
    """Fixed-length clips of `window` frames that never cross an episode boundary.

    Training samples whole batches (`batch`), not items through a DataLoader.
    """

    def __init__(
        self,
        data: VideoData,
        window: int,
        split: str = "train",
        val_fraction: float = 0.1,
        stride: int = 1,
    ) -> None:
        if split not in ("train", "val"):
            raise WorldbenchError(f"split must be 'train' or 'val', got {split!r}")
        if window < 1 or stride < 1:
            raise WorldbenchError(f"window and stride must be >= 1, got window={window}, stride={stride}")
        if not 0.0 <= val_fraction < 1.0:
            raise WorldbenchError(f"val_fraction must be in [0, 1), got {val_fraction}")

        self.data = data
        self.window = window
        self.split = split
        self.stride = stride
        self.frame_size = int(data.frames.shape[1])
        self.n_actions = data.n_actions

        segments = split_segments(data, split, val_fraction)  # [K, 2]
        starts = [np.arange(a, b - window + 1, stride, dtype=np.int64) for a, b in segments]
        self.starts = np.concatenate(starts) if starts else np.zeros(0, np.int64)  # [N_windows]
        if len(self.starts) == 0:
            lengths = segments[:, 1] - segments[:, 0]
            raise WorldbenchError(
                f"every {split} episode is shorter than one window of {window} frames "
                f"(episode lengths: {_preview(lengths)}); use a shorter window or longer episodes"
            )

    def __len__(self) -> int:
        return len(self.starts)

    def _frame_indices(self, which: np.ndarray) -> np.ndarray:
        return self.starts[which][:, None] + np.arange(self.window)  # [n, T]

    @staticmethod
    def _to_float(frames: np.ndarray) -> torch.Tensor:
        """uint8 [..., H, W, 3] -> float32 [..., 3, H, W] in [-1, 1]."""
        pixels = torch.from_numpy(frames).movedim(-1, -3)  # uint8 view [..., 3, H, W]
        out = torch.empty(pixels.shape, dtype=torch.float32)
        out.copy_(pixels)  # one pass converts and makes channels-first contiguous
        return out.div_(127.5).sub_(1.0)

    def _actions_for(self, index: np.ndarray) -> torch.Tensor:
        """Frame indices [..., T] -> int64 actions [..., T-1]."""
        if self.data.actions is None:
            return torch.full(index[..., :-1].shape, -1, dtype=torch.int64)
        return torch.from_numpy(self.data.actions[index[..., :-1]].astype(np.int64))

    def batch(self, which: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Windows `which` [B] -> (frames float32 [B, T, 3, H, W] in [-1, 1], actions int64 [B, T-1])."""
        index = self._frame_indices(np.asarray(which))  # [B, T]
        return self._to_float(self.data.frames[index]), self._actions_for(index)
