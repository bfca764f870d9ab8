"""ToyvidScore: a rule-based stand-in for VideoScore on the toyvid world.

Every aspect is computed from the world's own rules (one object of a known colour and
shape on a flat background, moving along a known trajectory), vectorised over the batch
and frames in torch. Each aspect is a quality q in [0, 1] mapped to VideoScore's scale as
1 + 3q. Thresholds come from measuring world.render clips and simple corruptions (see
tests/unit/test_toyvid_score.py); each constant's comment says what it bounds.

Per frame (frame_features): background = per-channel median; object colour = median of the
far half of the foreground; soft coverage alpha = the pixel's position on the bg->object
colour segment, inside a 2-px rim around the object mask; centre, spread, area, fill ratio,
edge width, colour purity and background noise follow from alpha.

  visual_quality       per frame: object present and compact, plausible area, sharp edges,
                       pure colour, clean background (each a factor); mean over frames.
  temporal_consistency object in every frame, stable object/background colour, area and
                       fill, small second differences of the centre (bounce passes).
  dynamic_degree       mean per-frame displacement vs the world's for the prompt's motion
                       (saturating: faster or jittering motion scores full, as VideoScore's
                       DD is fooled too); for "still", high when the object does not move.
  text_alignment       mean of colour, shape (fill ratio), background and motion matches;
                       motion = the centre track vs world.trajectory up to a translation.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as Fn

from vip.config import ConfigError
from vip.rewards.base import ASPECTS, RewardModel
from vip.toyvid import world

# --- segmentation -----------------------------------------------------------------------
FG_DIST = 0.3  # RGB distance from the background above which a pixel is foreground
OBJ_DIST = 0.25  # RGB distance from the object colour within which a pixel is object
MIN_SEP = 0.3  # object colour must differ this much from the background (closest in the grammar: green on gray, 0.56)
MIN_PIXELS = 5  # fewer object pixels than this: no object in the frame
LINE_DIST = 0.3  # a pixel counts towards coverage only if it lies near the bg->object colour segment

# --- quality thresholds (good, bad) -------------------------------------------------------
AREA_OK = (35.0, 110.0)  # soft area of a radius-5 shape: triangle ~50, circle ~79, square ~81 px
AREA_FALLOFF = (20.0, 60.0)
COMPACT = (0.25, 0.45)  # spread^2 / area: one filled shape 0.16-0.21 (noisy ~0.23); scattered pixels ~2
SHARP = (0.26, 0.45)  # edge width: anti-aliased <= 0.25 (an edge through a pixel's middle); 3x3 blur >= 0.35
PURE = (0.02, 0.10)  # RMS per-channel deviation inside the object's core
CLEAN = (0.01, 0.08)  # RMS per-channel deviation of the background; N(0, 0.1) noise gives ~0.085-0.1
STABLE_COLOUR = (0.02, 0.10)  # std over frames of object / background colour
STABLE_AREA = (0.05, 0.25)  # coefficient of variation of the area over frames
STABLE_FILL = (0.06, 0.20)  # std over frames of the fill ratio (shape flicker); ground truth <= ~0.03
SMOOTH = (4.0, 8.0)  # |second difference| of the centre in px; the world's 8-frame bounce reaches ~3.5
SMOOTH_SLACK = 0.5  # for other clip lengths: good = the world's largest second difference + this
STILL_STEP = (0.3, 1.5)  # mean per-frame displacement tolerated for a "still" prompt
DYN_SLACK = 0.9  # a dynamic prompt's motion is full marks at 90% of the world's displacement
COLOUR_MATCH = (0.08, 0.30)  # distance to the prompt's colour; closest pair (blue/cyan) is 0.56
BG_MATCH = (0.03, 0.15)  # distance to the prompt's background; closest pair (black/navy) is 0.31
BG_CLEAN = (0.02, 0.15)  # a background only partly "is" its colour when noisy
SHAPE_MATCH = (0.06, 0.16)  # |fill - expected|; closest pair (circle/square) differs by 0.21
MOTION_MATCH = (0.5, 3.0)  # RMS px off the prompt's trajectory (up to a translation); left vs right: ~9


def _ramp(x: torch.Tensor, good: float, bad: float) -> torch.Tensor:
    """1 where x is at or on the good side of `good`, 0 at or beyond `bad`, linear between."""
    return ((x - bad) / (good - bad)).clamp(0.0, 1.0)


def _band(x: torch.Tensor, lo: float, hi: float, width_lo: float, width_hi: float) -> torch.Tensor:
    """1 inside [lo, hi], falling linearly to 0 over width_lo below and width_hi above."""
    return torch.minimum(_ramp(x, lo, lo - width_lo), _ramp(x, hi, hi + width_hi))


def _sq3(d: torch.Tensor) -> torch.Tensor:
    """Squared norm over dim 1 of [N, 3, P] (explicit: much faster than a strided norm)."""
    return d[:, 0] * d[:, 0] + d[:, 1] * d[:, 1] + d[:, 2] * d[:, 2]


def frame_features(videos: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-frame statistics of [B, F, 3, H, W] clips; every entry is [B, F] or [B, F, k]."""
    B, F, C, H, W = videos.shape
    if C != 3:
        raise ValueError(f"expected RGB clips [B, F, 3, H, W], got shape {tuple(videos.shape)}")
    N, P = B * F, H * W
    x = videos.detach().reshape(N, C, P).float()

    # Background = per-channel median: the object covers < 10% of the frame, so this is the
    # flat background colour, and noise around it does not move it.
    bg = x.median(dim=2).values  # [N, 3]
    diff = x - bg[:, :, None]
    dist2 = _sq3(diff)
    fg = dist2 > FG_DIST**2  # [N, P]
    # Object colour = median colour of the foreground pixels at least as far from the
    # background as the foreground's median distance: the object's core, not its blended
    # (or blurred) rim, nor a few noise outliers just past FG_DIST.
    nan = torch.tensor(float("nan"), dtype=x.dtype, device=x.device)
    far = dist2 >= torch.where(fg, dist2, nan).nanmedian(dim=1, keepdim=True).values
    obj = torch.where((fg & far)[:, None], x, nan).nanmedian(dim=2).values
    obj = torch.where(torch.isnan(obj), bg, obj)
    v = obj - bg
    sep = v.norm(dim=1)  # [N]
    dobj2 = _sq3(x - obj[:, :, None])
    mask = fg & (dobj2 < OBJ_DIST**2) & (sep > MIN_SEP)[:, None]
    m2 = mask.float().view(N, 1, H, W)
    # Drop isolated pixels (fewer than 2 object neighbours): a lone noise pixel of the right
    # colour far from the object would otherwise pull the centre and spread.
    m2 = m2 * (Fn.avg_pool2d(m2, 3, 1, 1) * 9 >= 3).float()
    mask = m2.view(N, P) > 0
    present = mask.sum(1) >= MIN_PIXELS

    region = Fn.max_pool2d(m2, 5, 1, 2).view(N, P) > 0  # object and a 2-px rim: where its edge can be
    core = (-Fn.max_pool2d(-m2, 3, 1, 1)).view(N, P) > 0  # object pixels whose 8 neighbours are object

    # Soft coverage: invert the world's blend bg*(1-a) + obj*a by projecting onto bg->obj.
    dot = diff[:, 0] * v[:, 0, None] + diff[:, 1] * v[:, 1, None] + diff[:, 2] * v[:, 2, None]
    a_raw = dot / sep.pow(2).clamp_min(1e-6)[:, None]
    off_line2 = dist2 - a_raw * dot  # squared distance from the bg->obj line (Pythagoras)
    alpha = a_raw.clamp(0.0, 1.0) * (region & (off_line2 < LINE_DIST**2)).float()
    alpha = alpha * present[:, None].float()

    area = alpha.sum(1)
    ys, xs = torch.meshgrid(torch.arange(H, dtype=x.dtype, device=x.device) + 0.5,
                            torch.arange(W, dtype=x.dtype, device=x.device) + 0.5, indexing="ij")
    xs, ys = xs.reshape(P), ys.reshape(P)
    wsum = area.clamp_min(1e-6)
    cx, cy = (alpha * xs).sum(1) / wsum, (alpha * ys).sum(1) / wsum
    spread2 = (alpha * ((xs - cx[:, None]) ** 2 + (ys - cy[:, None]) ** 2)).sum(1) / wsum

    # Shape: soft fill ratio area / (width * height), width = sum over columns of the column's
    # peak coverage (exact for anti-aliased axis-aligned edges).
    a2 = alpha.view(N, H, W)
    width = a2.amax(1).sum(1)
    height = a2.amax(2).sum(1)
    fill = area / (width * height).clamp_min(1e-6)

    # Edge width: sum a(1-a) grows with the width of the transition band times the perimeter,
    # the total variation of a is the perimeter alone; their ratio is blur, independent of size.
    tv = (a2[:, 1:] - a2[:, :-1]).abs().sum((1, 2)) + (a2[:, :, 1:] - a2[:, :, :-1]).abs().sum((1, 2))
    edge_width = (alpha * (1 - alpha)).sum(1) / tv.clamp_min(1e-6)
    # Colour purity inside the object; noise in the background: RMS per-channel deviation.
    core_f = core.float()
    pur = (dobj2 * core_f).sum(1) / (3 * core_f.sum(1)).clamp_min(1)
    out_f = (~region).float()
    bg_rms = (dist2 * out_f).sum(1) / (3 * out_f.sum(1)).clamp_min(1)

    def bf(t: torch.Tensor) -> torch.Tensor:
        return t.reshape(B, F, *t.shape[1:])

    return {
        "bg": bf(bg), "obj": bf(obj), "present": bf(present), "area": bf(area),
        "centre": bf(torch.stack([cx, cy], 1)), "spread2": bf(spread2), "fill": bf(fill),
        "purity": bf(pur.sqrt()), "bg_rms": bf(bg_rms.sqrt()),
        "pixels": bf(mask.float().sum(1)), "edge_width": bf(edge_width),
    }


@lru_cache(maxsize=None)
def _expected_motion(motion: str, frames: int) -> tuple[np.ndarray, float]:
    """The world's trajectory relative to frame 0 ([F, 2]; it does not depend on the start),
    and its mean per-frame displacement (2 px for linear motions, ~2.8 px for bounce)."""
    # A frame big enough for any clip length: the offsets do not depend on the frame size.
    size = int(world.SIZE + world.SPEED * frames + 2 * world.BOUNCE_AMPLITUDE)
    xy = world.trajectory(motion, np.random.default_rng(0), frames, size)
    rel = xy - xy[:1]
    step = float(np.linalg.norm(np.diff(rel, axis=0), axis=1).mean()) if frames > 1 else 0.0
    return rel, step


@lru_cache(maxsize=None)
def _max_second_diff(frames: int) -> float:
    """Largest |second difference| of any world trajectory of this length (bounce: ~3.5 px at 8 frames)."""
    out = 0.0
    for motion in world.MOTIONS:
        rel = _expected_motion(motion, frames)[0]
        if frames >= 3:
            out = max(out, float(np.linalg.norm(rel[2:] - 2 * rel[1:-1] + rel[:-2], axis=1).max()))
    return out


@lru_cache(maxsize=None)
def _expected_fill() -> dict[str, float]:
    """Median fill ratio of each shape as world.render draws it, at random sub-pixel positions,
    measured with the same code that scores clips (circle ~0.79, square ~1.0, triangle ~0.55)."""
    out = {}
    for shape in world.SHAPES:
        clips = torch.stack([world.render(world.Prompt("red", shape, "still", "black"), s, frames=1)
                             for s in range(16)])
        out[shape] = float(frame_features(clips)["fill"].median())
    return out


class ToyvidScore(RewardModel):
    """VideoScore-like aspects from the toyvid world's rules; see the module docstring."""

    name = "toyvid_score"

    def score(self, videos: torch.Tensor, prompts: list[str]) -> dict[str, torch.Tensor]:
        if videos.dim() != 5:
            raise ValueError(f"expected clips [B, F, 3, H, W], got shape {tuple(videos.shape)}")
        B, F = videos.shape[:2]
        if len(prompts) != B:
            raise ValueError(f"got {len(prompts)} prompts for {B} clips")
        try:
            parsed = [world.parse(p) for p in prompts]
        except ValueError as e:  # one line naming the prompt (a ConfigError is a ValueError too)
            raise ConfigError(f"the reward toyvid_score scores toyvid-grammar prompts only: {e}") from None
        if B == 0:
            return {a: videos.new_zeros(0, dtype=torch.float32) for a in ASPECTS}
        q = self.qualities(frame_features(videos), parsed, F)
        return {a: 1.0 + 3.0 * q[a] for a in ASPECTS}

    @staticmethod
    def qualities(f: dict[str, torch.Tensor], parsed: list[world.Prompt], F: int) -> dict[str, torch.Tensor]:
        """Per-aspect quality in [0, 1], [B] each, from frame_features and the parsed prompts."""
        compact = _ramp(f["spread2"] / f["area"].clamp_min(1e-6), *COMPACT)
        # Objectness per frame: enough object-coloured pixels, gathered like one shape. Scattered
        # same-coloured specks (noise) are no object, so their centroid cannot pass for a steady
        # one in TC, DD or TA.
        w = f["present"].float() * compact  # [B, F]
        P = w.mean(1)
        wsum = w.sum(1).clamp_min(1e-6)

        def wmean(t: torch.Tensor) -> torch.Tensor:  # weighted mean over frames of [B, F]
            return (t * w).sum(1) / wsum

        def wstd(t: torch.Tensor) -> torch.Tensor:  # weighted std over frames of [B, F] or [B, F, k] (RMS over k)
            if t.dim() == 2:
                return wmean((t - wmean(t)[:, None]).pow(2)).sqrt()
            mu = (t * w[..., None]).sum(1, keepdim=True) / wsum[:, None, None]
            return wmean((t - mu).pow(2).mean(-1)).sqrt()

        # visual quality: per frame, every defect multiplies; a frame without an object scores 0.
        vq = (f["present"].float() * compact
              * _band(f["area"], *AREA_OK, *AREA_FALLOFF)
              * _ramp(f["edge_width"], *SHARP)
              * _ramp(f["purity"], *PURE)
              * _ramp(f["bg_rms"], *CLEAN)).mean(1)

        # temporal consistency: an object in every frame, stable colours, size and shape, and
        # smooth motion.
        c = f["centre"]
        if F >= 3:
            d2 = (c[:, 2:] - 2 * c[:, 1:-1] + c[:, :-2]).norm(dim=-1)
            ok3 = w[:, 2:] * w[:, 1:-1] * w[:, :-2]
            # Tolerance is prompt-independent: whatever the world itself does at this clip length
            # (bounce's sine is sharper in fewer frames) passes, for every prompt.
            good = max(SMOOTH[0], _max_second_diff(F) + SMOOTH_SLACK)
            bad = good + SMOOTH[1] - SMOOTH[0]
            smooth = (_ramp(d2, good, bad) * ok3).sum(1) / (F - 2)  # a triple with a missing frame scores 0
        else:
            smooth = torch.ones_like(P)
        area_cv = wstd(f["area"]) / wmean(f["area"]).clamp_min(1e-6)
        tc = (P * smooth * _ramp(wstd(f["obj"]), *STABLE_COLOUR) * _ramp(wstd(f["bg"]), *STABLE_COLOUR)
              * _ramp(area_cv, *STABLE_AREA) * _ramp(wstd(f["fill"]), *STABLE_FILL))

        # dynamic degree: the object's mean per-frame displacement against what the prompt asks;
        # steps touching a frame without an object count as no motion.
        exp = [_expected_motion(p.motion, F) for p in parsed]
        step_exp = torch.tensor([e[1] for e in exp], dtype=c.dtype, device=c.device)
        dynamic = torch.tensor([p.is_dynamic for p in parsed], dtype=torch.bool, device=c.device)
        if F >= 2:
            ok2 = w[:, 1:] * w[:, :-1]
            steps = (c[:, 1:] - c[:, :-1]).norm(dim=-1)
            step = (steps * ok2).sum(1) / ok2.sum(1).clamp_min(1e-6)
            dd = torch.where(dynamic, (step / (DYN_SLACK * step_exp).clamp_min(1e-6)).clamp(max=1.0),
                             _ramp(step, *STILL_STEP)) * ok2.mean(1)
        else:  # one frame shows no motion: right for "still", wrong otherwise
            dd = torch.where(dynamic, torch.zeros_like(P), P)

        # text alignment: mean of colour, shape, background and motion matches.
        colour = torch.tensor([world.COLOURS[p.colour] for p in parsed], dtype=c.dtype, device=c.device)
        bgc = torch.tensor([world.BACKGROUNDS[p.background] for p in parsed], dtype=c.dtype, device=c.device)
        fill = torch.tensor([_expected_fill()[p.shape] for p in parsed], dtype=c.dtype, device=c.device)
        m_colour = (_ramp((f["obj"] - colour[:, None]).norm(dim=-1), *COLOUR_MATCH) * w).mean(1)
        m_shape = (_ramp((f["fill"] - fill[:, None]).abs(), *SHAPE_MATCH) * w).mean(1)
        m_bg = (_ramp((f["bg"] - bgc[:, None]).norm(dim=-1), *BG_MATCH) * _ramp(f["bg_rms"], *BG_CLEAN)).mean(1)
        # Motion: RMS distance of the centre track from the world's trajectory for the prompt,
        # after the best translation (start positions are random). This checks direction,
        # speed, "still" and bounce's vertical oscillation in one number.
        rel = torch.tensor(np.stack([e[0] for e in exp]), dtype=c.dtype, device=c.device)  # [B, F, 2]
        r = c - rel
        r_mean = (r * w[..., None]).sum(1, keepdim=True) / wsum[:, None, None]
        res = wmean((r - r_mean).pow(2).sum(-1)).sqrt()
        m_motion = _ramp(res, *MOTION_MATCH) * P if F >= 2 else torch.where(dynamic, torch.zeros_like(P), P)
        ta = (m_colour + m_shape + m_bg + m_motion) / 4

        return {"visual_quality": vq, "temporal_consistency": tc, "dynamic_degree": dd, "text_alignment": ta}


def load(cfg) -> ToyvidScore:
    """Registry entry (the rule-based reward has no weights)."""
    return ToyvidScore()
