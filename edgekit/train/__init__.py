"""The one training loop and what it minimises, used by finetune, distill, LoRA and prune recovery.

- :mod:`edgekit.train.loop`: ``train`` (Accelerate, checkpoints, resume, interrupts), ``evaluate``.
- :mod:`edgekit.train.objectives`, :mod:`edgekit.train.losses`: cross-entropy, Hinton KD, multi-teacher KD.
- :mod:`edgekit.train.transfer`: the teacher's outputs on the training set, computed once and cached.
- :mod:`edgekit.train.data`: torch datasets and loaders over :class:`edgekit.data.splits.Split`.
- :mod:`edgekit.train.seq2seq`: the encoder-decoder (T5) dataset, token-level KD and generation.
"""
