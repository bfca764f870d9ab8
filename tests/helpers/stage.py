"""A small two-stage toyvid run (5 units, 6 prompts, 4 held-out prompts, 4 sampler steps, one epoch): the overrides the
local and the Slurm stage-loop tests share."""

ARGS = ["model.steps=4", "prompts.eval_count=6", "select.k=2", "loo.batch_size=6",
        "loo.units=down_blocks.0.motion_modules.0,down_blocks.1.motion_modules.1,up_blocks.2.motion_modules.0,"
        "mid_block.motion_modules.0,up_blocks.1.motion_modules.2",
        "curate.max_prompts=8", "curate.seeds_per_prompt=2", "curate.samples_per_task=8",
        "train.epochs=1", "train.batch_size=2", "train.min_pairs=2", "runtime.progress=false",
        "prompts.heldout_count=4"]
