"""Video data for world models: procedural games, the HDF5 format, and training windows."""

from worldmodel.data.games import GAMES, GameSpec, generate
from worldmodel.data.video import VideoData, VideoWindows, load_hdf5, resize_frames, save_hdf5

__all__ = [
    "GAMES",
    "GameSpec",
    "generate",
    "VideoData",
    "VideoWindows",
    "load_hdf5",
    "resize_frames",
    "save_hdf5",
]
