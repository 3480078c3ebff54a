"""The one training loop and what it minimises, used by finetune, distill, LoRA and prune recovery.

- :mod:`edgekit.train.loop`: ``train`` (Accelerate, one epoch after another, the best epoch kept).
- :mod:`edgekit.train.checkpoint`: what a checkpoint holds and how a run resumes from it.
- :mod:`edgekit.train.stopping`: Ctrl-C/SIGTERM after the current step, a non-finite loss stopped.
- :mod:`edgekit.train.distributed`: what changes across processes (``accelerate launch``).
- :mod:`edgekit.train.evaluate`: logits, the task's metrics, the validation score, a stage's metrics.
- :mod:`edgekit.train.objectives`, :mod:`edgekit.train.losses`: cross-entropy, Hinton KD, multi-teacher KD.
- :mod:`edgekit.train.transfer`: the teacher's outputs on the training set, computed once and cached.
- :mod:`edgekit.train.data`: torch datasets and loaders over :class:`edgekit.data.splits.Split`.
- :mod:`edgekit.train.seq2seq`: the encoder-decoder (T5) dataset, token-level KD and generation.
"""
