"""Which training samples use the empty prompt: a share of them, fixed by the sample's place."""
from vip.train.redpo_trainer import dropped_prompts


def test_the_share_is_kept_and_each_sample_decides_alone():
    drops = dropped_prompts(0, 0, 2000, 0.2)
    assert 0.17 < drops.float().mean().item() < 0.23
    # a sample's draw does not depend on which batch, rank or micro-step takes it
    assert dropped_prompts(0, 700, 50, 0.2).tolist() == drops[700:750].tolist()
    assert dropped_prompts(1, 0, 2000, 0.2).tolist() != drops.tolist()  # the seed matters


def test_zero_and_one():
    assert not dropped_prompts(0, 0, 100, 0.0).any()
    assert dropped_prompts(0, 0, 100, 1.0).all()
