"""Training-free long-video baselines on miga's models (``/work/shared/spec/baselines.md``).

- :mod:`miga.baselines.attention`: temporal-attention policies (FreeNoise's window fusion, FreeLong's
  SpectralBlend, FreePCA's PCA fusion) as pure functions on ``q, k, v``;
- :mod:`miga.baselines.hooks`: :func:`~miga.baselines.hooks.attention_policy`, which installs a policy on every
  temporal self-attention of a backbone for the duration of a ``with`` block;
- :mod:`miga.baselines.noise`: the initial-noise and step-gate rules (FreeNoise rescheduling, FreePCA's
  mean reuse and its t > 250 gate).

Nothing here imports the engine or the commands; the samplers that use these live elsewhere.
"""
