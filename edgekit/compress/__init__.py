"""Compression: pruning (and, later, LoRA/QLoRA)."""
