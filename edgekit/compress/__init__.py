"""Compression: L1 and structured pruning (heads, feed-forward neurons, conv channels) and LoRA /
QLoRA adapters over an NF4 base, merged back into a plain model. Methods are registry entries
(:mod:`edgekit.registry`, kind ``pruner``)."""
