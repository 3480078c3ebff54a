"""Knowledge distillation: strategies as links of the one training loop (:mod:`edgekit.train`):
straightforward, successive, multi-teacher, self-quantized (registry kind ``strategy``), and
students derived from a teacher by keeping some of its layers."""
