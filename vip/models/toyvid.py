"""The embedded backbone: a tiny AnimateDiff-architecture model of the toyvid world."""
from __future__ import annotations

from diffusers import DDIMScheduler, UNetMotionModel

from vip.models.base import resolve_dtype
from vip.models.codec import SpaceToDepth
from vip.models.motion_unet import MotionUNetModel
from vip.toyvid import world
from vip.toyvid.text import build_text_encoder, build_tokenizer

TEXT_DIM = 64


def build_unet() -> UNetMotionModel:
    # No spatial attention at the full 16x16 latent level (it dominates CPU cost);
    # cross-attention to the prompt at 8x8 and 4x4. 2 layers per block gives
    # 2+2+2 down, 1 mid and 3+3+3 up = 16 motion modules.
    return UNetMotionModel(
        in_channels=12, out_channels=12,
        block_out_channels=(32, 64, 64), layers_per_block=2,
        down_block_types=("DownBlockMotion", "CrossAttnDownBlockMotion", "CrossAttnDownBlockMotion"),
        up_block_types=("CrossAttnUpBlockMotion", "CrossAttnUpBlockMotion", "UpBlockMotion"),
        norm_num_groups=16, cross_attention_dim=TEXT_DIM, num_attention_heads=4,
        motion_num_attention_heads=4, motion_max_seq_length=world.FRAMES, use_motion_mid_block=True,
    )


def build_scheduler() -> DDIMScheduler:
    return DDIMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2",
                         prediction_type="v_prediction", timestep_spacing="trailing",
                         clip_sample=False, set_alpha_to_one=True)


def build_untrained(steps: int = 20, guidance: float = 1.0) -> MotionUNetModel:
    meta = {"backbone": "toyvid", "frames": world.FRAMES, "height": world.SIZE, "width": world.SIZE,
            "space_to_depth": 2, "steps": steps, "guidance": guidance}
    return MotionUNetModel(build_unet(), build_text_encoder(hidden=TEXT_DIM), build_tokenizer(),
                           build_scheduler(), SpaceToDepth(2), meta)


def load(path, cfg) -> MotionUNetModel:
    """Registry entry: the shipped teacher or a toyvid model saved by a stage."""
    dtype = resolve_dtype(cfg.dtype, cfg.device) if cfg.dtype != "auto" else None  # auto: as saved (float32)
    model = MotionUNetModel.load(path, device=cfg.device, dtype=dtype, backbone="toyvid")
    model.meta.update(steps=cfg.steps, guidance=cfg.guidance)
    return model
