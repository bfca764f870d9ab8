"""Toy 2-D experiment of supplement E: why ReDPO = DPO + w_SFT * SFT distils a small diffusion
model better than SFT or DPO alone. Run it with `python jobs/toy2d.py`.

data.py       the two-mode distribution, the mode/OOD classifier and the Mode-2 reward
mlp.py        the denoiser MLP (teacher: 4 layers x 64, student: 2 layers x 32)
diffusion.py  DDPM scheduler, training on data, ancestral sampling
distill.py    preference pairs and distillation with vip.redpo.pair_loss (SFT, DPO, DPO+SFT)
metrics.py    sliced Wasserstein distance
figures.py    the PNGs (Figure A, Figure B, training curves)
experiment.py one seed, all seeds, the findings check and the Markdown report
sweep.py      the hyperparameter sweep on tuning seeds
"""
