"""The paper's LLM instructions for prompt scoring (supplement F, Listings 1 and 2) and their answers.

The listings are copied from the supplement word for word. The only change: the PDF text
breaks a few wrapped bullet lines with an empty line ("a person" / "" / "blinking, ...");
those empty lines are dropped, the wrapped lines themselves are kept as printed.
"""
from __future__ import annotations

import hashlib
import re

# Listing 1. LLM Instruction for Dynamic Motion Scoring
DYNAMIC_MOTION = """\
###Task Overview:
You are a model responsible for scoring prompts for a video diffusion model.
Your job is to evaluate and determine the level of dynamic motion present in each prompt.
The final output should be a score from 0 to 3.

### Task Description:
1. Assign score 0 if the prompt is unusable due to:

- Fragmented, unclear, or incoherent sentences.
- Excessive mentions of country names (distracts from motion evaluation).

2. Otherwise, analyze the degree of motion and assign a score from 1 to 3:
- 1: Static Scene No motion or movement (e.g., a still scene, a stationary object).
- 2: Minimal Motion Slight transitions or small repetitive actions (e.g., a person
blinking, tree leaves rustling, a slow tilt upward).
- 3: Considerable Motion Significant movement or scene transformation (e.g.,
running, a car driving, waves crashing, person walking, a smooth tracking shot
following person).

### Examples:
- 1: A still painting of a landscape with a sunset.
- 2: A person slowly turning the pages of a book.
- 3: A cyclist racing through a city, dodging traffic.

### Output format:
Always return your result in this format:
[RESULT] <a score between 0 and 3>
"""

# Listing 2. LLM Instruction for Visual Quality Scoring
VISUAL_QUALITY = """\
###Task Overview:
You are a model responsible for scoring prompts for a video diffusion model.
The definition of "Visual Quality" is the quality of the video in terms of clearness,
resolution, brightness, and color. Your job is to evaluate and determine the level of
Visual Quality present in each prompt. The final output should be a score from 0 to 3.

### Task Description:
1. Assign score 0 if the prompt is unusable due to:

- Fragmented, unclear, or incoherent sentences.
- Excessive mentions of country names (distracts evaluation).

2. Otherwise, analyze the degree of Visual Quality and assign a score from 1 to 3:
- Score 1: Low Visual Quality: Vague or generic descriptions with minimal details. No
mention of visual attributes like lighting, colors, resolution, or atmosphere.
- Score 2: Moderate Visual Quality: Some visual attributes are present but lack
specificity or coherence. Colors, lighting, and resolution are mentioned but not in
depth.

- Score 3: High Visual Quality: The prompt is highly descriptive, rich in visual
attributes. Specific details about lighting, resolution, colors, textures, and
clarity are included.

### Examples:
- Score 1: A beach with waves.
- Score 2: A snow-covered mountain with a few clouds in the sky.
- Score 3: An elderly man sitting on a worn leather armchair beside a crackling fireplace,
the warm glow casting deep shadows on the wooden walls.

### Output format:
Always return your result in this format:
[RESULT] <a score between 0 and 3>
"""

# The two scorings every prompt gets, by name (shard and HDF5 dataset names use these keys).
INSTRUCTIONS: dict[str, str] = {"dynamic_motion": DYNAMIC_MOTION, "visual_quality": VISUAL_QUALITY}

# The paper does not show how the prompt follows the instruction; a headed section is unambiguous
# even for prompts that span several lines.
_PROMPT_HEADER = "\n### Prompt:\n"


def request_text(instruction: str, prompt: str) -> str:
    """The full text sent for one prompt: the instruction, then the prompt under its own heading."""
    return instruction + _PROMPT_HEADER + prompt


def instruction_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def template_sha256(name: str) -> str:
    """Identifies an instruction *and* the framing around the prompt: the answer-cache key, so a
    change to either never reuses old answers."""
    return instruction_sha256(request_text(INSTRUCTIONS[name], ""))


_RESULT = re.compile(r"\[RESULT\]", re.IGNORECASE)
# After the tag: optional colon, spaces and markdown bold, then one digit 0-3 that is not the start
# of a longer number ("10", "2.5") or a fraction ("3/3").
_SCORE = re.compile(r"\s*:?\s*\**\s*([0-3])(?!\d|\.\d|\s*/)")


def parse_result(answer: str | None) -> int | None:
    """The score after the last `[RESULT]` tag (0-3), or None if there is no tag or what follows
    the last one is not a single score 0-3. Only the last tag counts: models sometimes restate
    the format ("[RESULT] <a score ...>") before answering."""
    if not answer:
        return None
    tags = list(_RESULT.finditer(answer))
    if not tags:
        return None
    m = _SCORE.match(answer, tags[-1].end())
    return int(m.group(1)) if m else None
