"""Seq2seq (``text2text``): a source text to a target text with an encoder-decoder such as T5.

Data are source/target pairs from files (``text_column`` -> ``label_column``); training minimises
token-level cross-entropy (KD: token-level Hinton KD against the teacher run on the fly); scores
are BLEU and ROUGE-L of greedy generations; exports are an encoder and a decoder graph.
"""

from __future__ import annotations

from edgekit.tasks.base import TaskSpec

NAME = "text2text"

SPEC = TaskSpec(
    NAME,
    "text",
    "T5-style source -> target text (encoder-decoders)",
    generates=True,
    score_key="bleu",
    headline_keys=("bleu", "rouge_l"),
    min_labels=0,
    times_model=False,
    transformer_fusions=False,
    static_int8=False,
    logit_kd=False,
    parity_examples=64,
    jobs={
        "load_data": "edgekit.data.pairs:load_pairs",
        "load_eval_split": "edgekit.data.pairs:load_eval_pairs",
        "dataset": "edgekit.train.seq2seq:Seq2SeqSplitDataset.of",
        "evaluate_model": "edgekit.train.seq2seq:evaluate_seq2seq",
        "default_objective": "edgekit.train.seq2seq:token_cross_entropy",
        "kd_objective": "edgekit.train.seq2seq:kd_objective",
        "graphs": "edgekit.export.seq2seq_graphs:encoder_decoder_graphs",
        "bundle_metrics": "edgekit.runtime.scoring:generation_metrics_of",
    },
)
