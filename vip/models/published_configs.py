"""The published configs of the real backbones, as plain dicts: real-size models built from
them on the meta device (random weights, nothing downloaded) check parameter counts and
unit lists against the published figures (tests/unit/test_animatediff.py, test_wan.py).

Sources (config.json of each Hugging Face repo, diffusers layout; the same values appear in
the reference implementations that pin them, e.g. openvino genai's Wan config test and
AnimateDiff adapter config tests on GitHub):
"""
from __future__ import annotations

# runwayml/stable-diffusion-v1-5 (mirror: stable-diffusion-v1-5/stable-diffusion-v1-5), unet/config.json
SD15_UNET = {
    "act_fn": "silu",
    "attention_head_dim": 8,
    "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False,
    "cross_attention_dim": 768,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "out_channels": 4,
    "sample_size": 64,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
}

# guoyww/animatediff-motion-adapter-v1-5-2, config.json (AnimateDiff v2 motion modules, with a mid block)
MOTION_ADAPTER_V1_5_2 = {
    "block_out_channels": [320, 640, 1280, 1280],
    "motion_layers_per_block": 2,
    "motion_max_seq_length": 32,
    "motion_mid_block_layers_per_block": 1,
    "motion_norm_num_groups": 32,
    "motion_num_attention_heads": 8,
    "use_motion_mid_block": True,
}

# guoyww/animatediff-motion-adapter-v1-5-3, config.json (AnimateDiff v3: no mid-block motion module)
MOTION_ADAPTER_V3 = {**MOTION_ADAPTER_V1_5_2, "use_motion_mid_block": False}

# Wan-AI/Wan2.1-T2V-1.3B-Diffusers, transformer/config.json
WAN21_T2V_1_3B_TRANSFORMER = {
    "added_kv_proj_dim": None,
    "attention_head_dim": 128,
    "cross_attn_norm": True,
    "eps": 1e-06,
    "ffn_dim": 8960,
    "freq_dim": 256,
    "image_dim": None,
    "in_channels": 16,
    "num_attention_heads": 12,
    "num_layers": 30,
    "out_channels": 16,
    "patch_size": [1, 2, 2],
    "qk_norm": "rms_norm_across_heads",
    "rope_max_seq_len": 1024,
    "text_dim": 4096,
}

# Wan-AI/Wan2.1-T2V-14B-Diffusers, transformer/config.json (differs from 1.3B in width and depth)
WAN21_T2V_14B_TRANSFORMER = {**WAN21_T2V_1_3B_TRANSFORMER, "num_attention_heads": 40, "ffn_dim": 13824,
                             "num_layers": 40}

# Wan-AI/Wan2.1-T2V-1.3B-Diffusers, scheduler/scheduler_config.json (the fields that matter here)
WAN21_SCHEDULER = {
    "_class_name": "UniPCMultistepScheduler",
    "prediction_type": "flow_prediction",
    "use_flow_sigmas": True,
    "flow_shift": 3.0,
    "num_train_timesteps": 1000,
    "solver_order": 2,
    "final_sigmas_type": "zero",
}
