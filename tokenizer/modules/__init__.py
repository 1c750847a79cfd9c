"""Building blocks shared by every video VAE in the toolkit (causal / group causal convs, TDC, blocks, samplers)."""
from .blocks import FrameAttention, FrameGroupNorm, ResnetBlock3D
from .cache import FrameCache, is_first_chunk
from .conv import CausalConv3d, ConvSpec, FrameConv3d, GroupCausalConv3d, GroupOfOneConv3d
from .sampling import SpatialDownsample, SpatialUpsample, TemporalDownsample, TemporalUpsample
from .tdc import tdc_kernel

__all__ = ["CausalConv3d", "GroupCausalConv3d", "GroupOfOneConv3d", "FrameConv3d", "ConvSpec", "FrameCache", "is_first_chunk",
           "FrameGroupNorm", "ResnetBlock3D", "FrameAttention", "SpatialDownsample", "SpatialUpsample",
           "TemporalDownsample", "TemporalUpsample", "tdc_kernel"]
