"""DeCo-VAE's motion module M (paper sec. 3.2, eqs. 4-5): scale-space flow, its estimators, their pre-training.

- :mod:`.warp`: the scale-space warp W(x, m) (eq. 5), checked against CompressAI;
- :mod:`.estimators`: the learned coarse-to-fine estimator (default, pre-trained weights shipped in
  ``tokenizer/weights/motion.safetensors``), OpenCV's DIS / Farneback as the classical baseline, the module M + W;
- :mod:`.pairs`: known-motion pairs of real pictures and the fixed train / held-out split;
- :mod:`.objective`: the pre-training objectives of the VAE trainer's ``motion`` stage, measures, export.

Pre-training has one entry point, the VAE trainer: ``python -m tokenizer.train_vae --config
configs/tokenizer/motion_pretrain.yaml``; ``python -m tokenizer.motion export RUN_DIR OUT`` writes a run's motion
weights as the file DeCo-VAE loads.
"""
from .estimators import (ARCH, CLASSICAL_METHODS, MOTION_KINDS, CoarseToFineFlow, MotionConfig, MotionModule,
                         OpenCVFlow, default_weights_path)
from .objective import (OBJECTIVES, MotionLossConfig, charbonnier, clip_pairs, edge_aware_smoothness,
                        end_point_error, export_motion, flow_error, motion_module_of, motion_pretrain_loss,
                        warp_error)
from .warp import (ScaleSpaceWarp, base_grid, flow_norm_to_px, flow_px_to_norm, gaussian_blur, gaussian_kernel,
                   gaussian_volume, scale_to_grid)

__all__ = ["ARCH", "CLASSICAL_METHODS", "MOTION_KINDS", "OBJECTIVES", "CoarseToFineFlow", "MotionConfig",
           "MotionLossConfig", "MotionModule", "OpenCVFlow", "ScaleSpaceWarp", "base_grid", "charbonnier",
           "clip_pairs", "default_weights_path", "edge_aware_smoothness", "end_point_error", "export_motion",
           "flow_error", "flow_norm_to_px", "flow_px_to_norm", "gaussian_blur", "gaussian_kernel", "gaussian_volume",
           "motion_module_of", "motion_pretrain_loss", "scale_to_grid", "warp_error"]
