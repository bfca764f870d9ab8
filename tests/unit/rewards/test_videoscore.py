"""VideoScore on a tiny random Idefics2 of the published layout (sharded safetensors, config.json
with the published architecture and 5 labels, tokenizer, preprocessor and processor files),
loaded through load_reward as a user would."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vip.config import ConfigError, RewardConfig
from vip.rewards.base import ASPECTS, total
from vip.rewards.frames import stride_indices, to_pil
from vip.rewards.registry import load_reward
from vip.rewards.videoscore import OUTPUTS, QUERY_TEMPLATE, VideoScoreNet, build_query, last_token_index

from helpers.tiny_rewards import copy_checkpoint

IMAGE_TOKENS = ["<fake_token_around_image>", "<image>", "<end_of_utterance>"]


def tiny_tokenizer():
    """A legacy Mistral-style tokenizer.json pipeline, as Mistral-7B's and Idefics2's: sentencepiece-BPE with
    byte fallback, normalizer Prepend("▁") + Replace(" ", "▁"), no pre-tokenizer, "<s> $A"; a tiny vocabulary
    (lower-case letters and a little punctuation; capitals, digits and newlines fall back to bytes) with
    Idefics2's special tokens added after it."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, processors

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    vocab.update({f"<0x{b:02X}>": 3 + b for b in range(256)})
    for piece in list("▁abcdefghijklmnopqrstuvwxyz,.:()\"-") + ["▁▁", "▁t", "he", "▁the", "in", "▁a"]:
        vocab[piece] = len(vocab)
    merges = [("▁", "▁"), ("▁", "t"), ("h", "e"), ("▁t", "he"), ("i", "n"), ("▁", "a")]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", 1)])
    tok.add_special_tokens([AddedToken(t, normalized=False, special=True)
                            for t in ["<unk>", "<s>", "</s>"] + IMAGE_TOKENS])
    return tok


def save_tokenizer(tok, path):
    """tokenizer.json plus the tokenizer_config.json / special_tokens_map.json that transformers 4 saves
    for Idefics2's LlamaTokenizerFast (pad = <unk>, BOS added, no EOS)."""
    tok.save(str(path / "tokenizer.json"))
    specials = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<unk>"}
    (path / "tokenizer_config.json").write_text(json.dumps({
        "add_bos_token": True, "add_eos_token": False, "add_prefix_space": None, "legacy": False,
        "additional_special_tokens": IMAGE_TOKENS, "clean_up_tokenization_spaces": False,
        "processor_class": "Idefics2Processor", "tokenizer_class": "LlamaTokenizer",
        "added_tokens_decoder": {str(tok.token_to_id(t)): {"content": t, "special": True, "normalized": False,
                                                            "lstrip": False, "rstrip": False, "single_word": False}
                                 for t in ["<unk>", "<s>", "</s>"] + IMAGE_TOKENS}, **specials}))
    (path / "special_tokens_map.json").write_text(json.dumps({"additional_special_tokens": IMAGE_TOKENS, **specials}))


def write_checkpoint(path, seed=0):
    """A VideoScore directory in the published format, tiny sizes, random weights."""
    from safetensors.torch import save_file
    from transformers import Idefics2Config
    from transformers.models.idefics2.image_processing_pil_idefics2 import Idefics2ImageProcessorPil

    path.mkdir(parents=True)
    tok = tiny_tokenizer()
    save_tokenizer(tok, path)
    Idefics2ImageProcessorPil(size={"shortest_edge": 28, "longest_edge": 56}, do_image_splitting=False).save_pretrained(path)
    (path / "processor_config.json").write_text(json.dumps({"image_seq_len": 4, "processor_class": "Idefics2Processor"}))
    config = Idefics2Config(
        text_config=dict(model_type="mistral", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, vocab_size=tok.get_vocab_size(),
                         pad_token_id=0),
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                           image_size=56, patch_size=14),
        perceiver_config=dict(resampler_n_latents=4, resampler_depth=1, resampler_n_heads=2, resampler_head_dim=8,
                              num_key_value_heads=1),
        image_token_id=tok.token_to_id("<image>"))
    torch.manual_seed(seed)
    net = VideoScoreNet(config)
    with torch.no_grad():
        net.score.bias.copy_(torch.tensor([2.5, 2.0, 3.0, 1.5, 2.2]))
    config.save_pretrained(path)
    raw = json.loads((path / "config.json").read_text())
    raw.update(architectures=["Idefics2ForSequenceClassification"], problem_type="regression",
               id2label={str(i): f"LABEL_{i}" for i in range(5)}, label2id={f"LABEL_{i}": i for i in range(5)})
    (path / "config.json").write_text(json.dumps(raw))
    # Two shards and an index, as the hub repository ships it (there: four shards).
    sd = {k: v.contiguous() for k, v in net.state_dict().items()}
    keys = sorted(sd)
    shards = {"model-00001-of-00002.safetensors": keys[: len(keys) // 2],
              "model-00002-of-00002.safetensors": keys[len(keys) // 2:]}
    for fname, ks in shards.items():
        save_file({k: sd[k] for k in ks}, str(path / fname), metadata={"format": "pt"})
    weight_map = {k: f for f, ks in shards.items() for k in ks}
    (path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return net


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("vs") / "VideoScore"
    net = write_checkpoint(path)
    return path, net


@pytest.fixture(scope="module")
def reward(ckpt):
    return load_reward(RewardConfig(name="videoscore", path=str(ckpt[0]), frames=4, batch_size=4))


def clips(n=3, frames=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, frames, 3, 32, 40, generator=g)


PROMPTS = ["a red circle moves left", "a blue square", "a green triangle bounces on a white background"]


def capture_inputs(reward, monkeypatch):
    seen = {}
    forward = reward.net.forward

    def spy(input_ids, attention_mask, pixel_values, pixel_attention_mask):
        seen.update(input_ids=input_ids, attention_mask=attention_mask, pixel_values=pixel_values)
        return forward(input_ids, attention_mask, pixel_values, pixel_attention_mask)

    monkeypatch.setattr(reward.net, "forward", spy)
    return seen


def test_loads_the_published_weights_exactly(ckpt, reward):
    _, net = ckpt
    mine = reward.net.state_dict()
    for k, v in net.state_dict().items():
        assert torch.equal(mine[k], v), k


def test_query_holds_the_published_template_and_the_prompt(reward, monkeypatch):
    q = build_query("a red circle", 3)
    head, tail = QUERY_TEMPLATE.split("{text_prompt}")
    assert q.startswith(head) and q.endswith(tail + "<image> " * 3)
    assert 'For this video, the text prompt is "a red circle",' in q
    assert "(5) factual consistency" in q and q.count("<image>") == 3
    # What the network is fed: the decoded tokens are the query with each <image> expanded.
    seen = capture_inputs(reward, monkeypatch)
    reward.score(clips(1), ["a red circle"])
    text = reward.processor.tokenizer.decode(seen["input_ids"][0])
    assert 'the text prompt is "a red circle",' in text and "Suppose you are an expert" in text
    assert text.count("<image>") == reward.frames * reward.processor.image_seq_len
    assert seen["pixel_values"].shape[:2] == (1, reward.frames)


def test_stride_indices_match_the_published_formula():
    assert stride_indices(10, 4) == [0, 2, 5, 7]  # np.arange(0, 10, 2.5).astype(int)
    assert stride_indices(48, 16) == list(range(0, 48, 3))
    assert stride_indices(16, 16) == list(range(16))  # a clip of exactly N frames is used whole


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 300), st.integers(1, 64))
def test_stride_indices_property(total, n):
    if n > total:
        with pytest.raises(ValueError):
            stride_indices(total, n)
        return
    idx = stride_indices(total, n)
    assert len(idx) == n and idx[0] == 0 and idx[-1] < total
    assert all(a < b for a, b in zip(idx, idx[1:]))
    if total > n:  # the published example's own expression; its float arange can add an
        # (n+1)-th index == total, a frame the published decode loop never finds, so n remain
        assert idx == np.arange(0, total, total / n).astype(int).tolist()[:n]


def test_frames_sampled_to_the_count_in_order(reward):
    v = torch.arange(10, dtype=torch.float32).div(255).view(1, 10, 1, 1, 1).expand(2, 10, 3, 4, 4)
    got = reward.sample(v)  # uint8 [2, 4, 3, 4, 4]; frame i has value i
    assert got.shape == (2, 4, 3, 4, 4) and got.dtype == torch.uint8
    assert got[0, :, 0, 0, 0].tolist() == [0, 2, 5, 7]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(1, 12), min_size=1, max_size=5), st.integers(12, 16), st.booleans())
def test_last_token_index_left_and_right_padding(lengths, L, left):
    mask = torch.zeros(len(lengths), L, dtype=torch.long)
    for i, n in enumerate(lengths):
        if left:
            mask[i, L - n:] = 1
        else:
            mask[i, :n] = 1
    want = [L - 1 if left else n - 1 for n in lengths]
    assert last_token_index(mask).tolist() == want


def test_head_reads_the_last_token(reward):
    net = reward.net
    enc = reward.processor(text=[build_query("a red circle", 4)], images=[to_pil(reward.sample(clips(1))[0])],
                           return_tensors="pt")
    ids, mask, pix, pmask = enc["input_ids"], enc["attention_mask"], enc["pixel_values"], enc["pixel_attention_mask"]
    base = net(ids, mask, pix, pmask)
    # the head is score(hidden state at the last token)
    hidden = net.model(input_ids=ids, attention_mask=mask, pixel_values=pix, pixel_attention_mask=pmask).last_hidden_state
    assert torch.allclose(base, net.score(hidden[:, -1]), atol=1e-6)
    # a text token before the last one changes the score (the last token attends to it) ...
    where = (ids[0] != reward.processor.image_token_id).nonzero().flatten()
    j = int(where[where < ids.shape[1] - 30][-1])
    changed = ids.clone()
    changed[0, j] = 100 if int(ids[0, j]) != 100 else 101
    assert not torch.allclose(net(changed, mask, pix, pmask), base, atol=1e-4)
    # ... and with right padding the pads after it change nothing
    padded = torch.cat([ids, torch.zeros(1, 5, dtype=ids.dtype)], 1)
    pmask2 = torch.cat([mask, torch.zeros(1, 5, dtype=mask.dtype)], 1)
    assert torch.allclose(net(padded, pmask2, pix, pmask), base, atol=1e-5)


def test_batch_equals_one_at_a_time(ckpt):
    v = clips(3)
    batched = load_reward(RewardConfig(name="videoscore", path=str(ckpt[0]), frames=4, batch_size=3)).score(v, PROMPTS)
    single = load_reward(RewardConfig(name="videoscore", path=str(ckpt[0]), frames=4, batch_size=1)).score(v, PROMPTS)
    for a in OUTPUTS:
        assert torch.allclose(batched[a], single[a], atol=1e-5), a
    # different prompts (different lengths, so padding) give different scores
    assert not torch.allclose(batched["visual_quality"][:1], batched["visual_quality"][1:2])


def test_output_keys_and_shapes(reward):
    s = reward.score(clips(3), PROMPTS)
    assert list(s) == list(ASPECTS) + ["factual_consistency"]
    for a in OUTPUTS:
        assert s[a].shape == (3,) and s[a].dtype == torch.float32 and torch.isfinite(s[a]).all()
    assert total(s).shape == (3,)


def test_too_few_frames_is_a_config_error(ckpt):
    published = load_reward(RewardConfig(name="videoscore", path=str(ckpt[0])))  # frames 0 = 16 (v1)
    with pytest.raises(ConfigError, match="frames fewer than the reward model needs.*16"):
        published.score(clips(1, frames=8), PROMPTS[:1])


@pytest.mark.parametrize("remove,named", [
    ("model.safetensors.index.json", "model.safetensors"),
    ("model-00002-of-00002.safetensors", "model-00002-of-00002.safetensors"),
    ("config.json", "config.json"),
    ("preprocessor_config.json", "preprocessor_config.json"),
])
def test_missing_file_is_named(ckpt, tmp_path, remove, named):
    d = copy_checkpoint(ckpt[0], tmp_path / "VideoScore", remove)
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        load_reward(RewardConfig(name="videoscore", path=str(d)))


@pytest.mark.parametrize("change,named", [
    ({"id2label": {"0": "a", "1": "b"}}, "id2label"),
    ({"architectures": ["Idefics2ForConditionalGeneration"]}, "architectures"),
    ({"image_token_id": 5}, "image_token_id"),
])
def test_config_that_does_not_match_is_named(ckpt, tmp_path, change, named):
    d = copy_checkpoint(ckpt[0], tmp_path / "VideoScore")
    raw = json.loads((d / "config.json").read_text())
    raw.update(change)
    (d / "config.json").write_text(json.dumps(raw))
    with pytest.raises(ConfigError, match=named):
        load_reward(RewardConfig(name="videoscore", path=str(d)))


def test_config_and_weights_that_disagree_name_the_weight(ckpt, tmp_path):
    d = copy_checkpoint(ckpt[0], tmp_path / "VideoScore")
    raw = json.loads((d / "config.json").read_text())
    raw["text_config"]["num_hidden_layers"] = 3  # the weights have 2 layers
    (d / "config.json").write_text(json.dumps(raw))
    with pytest.raises(ConfigError, match=r"model\.text_model\.layers\.2\."):
        load_reward(RewardConfig(name="videoscore", path=str(d)))


def test_empty_or_missing_path(tmp_path):
    with pytest.raises(ConfigError, match="reward.path"):
        load_reward(RewardConfig(name="videoscore", path=""))
    with pytest.raises(ConfigError, match="not a directory"):
        load_reward(RewardConfig(name="videoscore", path=str(tmp_path / "nope")))


def test_processor_that_does_not_match_the_config_is_named(ckpt, tmp_path):
    d = copy_checkpoint(ckpt[0], tmp_path / "VideoScore")
    (d / "processor_config.json").write_text(json.dumps({"image_seq_len": 8}))  # the perceiver has 4 latents
    with pytest.raises(ConfigError, match="image_seq_len"):
        load_reward(RewardConfig(name="videoscore", path=str(d)))


def expand_images(query, seq_len):
    """The published Idefics2Processor's text expansion (transformers 4.45): each <image> becomes
    <fake><image> x seq_len<fake>, and two adjacent <fake> tokens merge into one."""
    fake, image = "<fake_token_around_image>", "<image>"
    return query.replace(image, fake + image * seq_len + fake).replace(fake + fake, fake)


def test_tokenizer_runs_the_saved_pipeline(ckpt, reward):
    """input_ids are tokenizer.json's own pipeline (what transformers 4's LlamaTokenizerFast runs), not
    transformers 5's rebuilt Llama pipeline: after each image group the legacy normalizer prepends "▁" to
    the " " segment, giving "▁▁" (the rebuilt Metaspace pipeline gives "▁"), also as the last token."""
    from tokenizers import Tokenizer

    saved = Tokenizer.from_file(str(ckpt[0] / "tokenizer.json"))
    frames = reward.sample(clips(2))
    for prompt in ("a red circle", "A Café, 3 people\twalk"):
        enc = reward.encode(frames[:1], [prompt])
        text = expand_images(build_query(prompt, reward.frames), reward.processor.image_seq_len)
        assert enc["input_ids"][0].tolist() == saved.encode(text).ids
        tokens = reward.processor.tokenizer.convert_ids_to_tokens(enc["input_ids"][0].tolist())
        fake = [i for i, t in enumerate(tokens) if t == "<fake_token_around_image>"]
        closing = fake[1::2]
        assert len(closing) == reward.frames and all(tokens[i + 1] == "▁▁" for i in closing)
        assert tokens[-1] == "▁▁" and tokens[0] == "<s>" and tokens.count("<s>") == 1 and "</s>" not in tokens


def test_tokenizer_special_tokens_and_right_padding(reward):
    tok = reward.processor.tokenizer
    assert (tok.bos_token, tok.eos_token, tok.unk_token, tok.pad_token) == ("<s>", "</s>", "<unk>", "<unk>")
    assert tok.padding_side == "right"
    n_vocab = tiny_tokenizer().get_vocab_size(with_added_tokens=False)
    assert tok.convert_tokens_to_ids(IMAGE_TOKENS) == [n_vocab + k for k in range(3)]  # after the vocabulary
    short, long = "a red circle", "a green triangle bounces on a white background"
    frames = reward.sample(clips(2))
    one = [reward.encode(frames[i:i + 1], [p])["input_ids"][0] for i, p in enumerate((short, long))]
    both = reward.encode(frames, [short, long])
    n = len(one[0])
    assert both["input_ids"][0, :n].tolist() == one[0].tolist() and both["input_ids"][1].tolist() == one[1].tolist()
    assert (both["input_ids"][0, n:] == tok.pad_token_id).all()
    assert both["attention_mask"][0].tolist() == [1] * n + [0] * (len(one[1]) - n)


def test_tokenizer_that_is_not_llama_is_named(ckpt, tmp_path):
    d = copy_checkpoint(ckpt[0], tmp_path / "VideoScore")
    raw = json.loads((d / "tokenizer_config.json").read_text())
    raw["tokenizer_class"] = "GPT2Tokenizer"
    (d / "tokenizer_config.json").write_text(json.dumps(raw))
    with pytest.raises(ConfigError, match="tokenizer_class"):
        load_reward(RewardConfig(name="videoscore", path=str(d)))


def test_missing_tokenizer_json_is_named(ckpt, tmp_path):
    d = copy_checkpoint(ckpt[0], tmp_path / "VideoScore")
    (d / "tokenizer.json").unlink()
    with pytest.raises(ConfigError, match=r"tokenizer\.json"):
        load_reward(RewardConfig(name="videoscore", path=str(d)))


def test_perceiver_uses_the_text_models_eps(ckpt, tmp_path):
    """The published perceiver takes hidden_size and rms_norm_eps from text_config; transformers 5 copies
    them only when perceiver_config's hidden_size differs, so a config whose widths agree (the real
    4096-wide one) would get the perceiver default eps 1e-6."""
    d = copy_checkpoint(ckpt[0], tmp_path / "VideoScore")
    raw = json.loads((d / "config.json").read_text())
    raw["text_config"]["rms_norm_eps"] = 0.03
    raw["perceiver_config"]["hidden_size"] = raw["text_config"]["hidden_size"]
    (d / "config.json").write_text(json.dumps(raw))
    net = load_reward(RewardConfig(name="videoscore", path=str(d))).net
    eps = [m.variance_epsilon for m in net.model.connector.perceiver_resampler.modules() if hasattr(m, "variance_epsilon")]
    assert len(eps) > 1 and set(eps) == {0.03}
