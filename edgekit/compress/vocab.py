"""Vocabulary pruning (``edgekit prune --method vocab``): keep the tokens the task's data uses.

Most of a small encoder is its word embeddings (MiniLM-L6: 11.7 M of 22.7 M parameters, for 30,522
tokens), and a task uses a few thousand of them. This keeps the special tokens, every token the
training texts (and, for seq2seq, the training targets) tokenize to, and optionally the first
``keep_first`` ids of the vocabulary; it rebuilds the embedding matrix from those rows (for T5 the
shared embedding and the LM head together, tied or not) and rewrites the tokenizer so its ids name the
new rows:

- WordPiece and BPE (BERT-like): every token string stays in the vocabulary, so a text is split
  exactly as before; a pruned token's string points at the [UNK] row. Tokenization is unchanged and
  unknown tokens go to [UNK] as they did.
- Unigram (T5's SentencePiece): the pruned pieces leave the vocabulary. A text whose pieces are all
  kept is split exactly as before (its best segmentation is still there and nothing new competes);
  a text with a pruned piece is split into kept pieces instead (characters missing from them are [UNK]).

Proof, on the validation data (recorded in the stage's metrics): every kept token's new id maps to
its old embedding vector, every pruned token to [UNK], and the model's logits on validation texts
whose tokens are all kept equal the unpruned model's (for T5 the decoder's logits over the kept
tokens, teacher-forced on the targets).
"""

from __future__ import annotations

import copy
import json
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from edgekit.errors import EdgekitError
from edgekit.log import info as log
from edgekit.models.handle import restore_pruned_vocabulary
from edgekit.runtime.bundle import TOKENIZER_FILE

CONFIG_IDS = ("pad_token_id", "eos_token_id", "bos_token_id", "decoder_start_token_id", "sep_token_id")


def _encode(tokenizer, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of each text (special tokens included, no padding or truncation). Through the
    tokenizer's own call: a copy of its Rust backend would be made from its serialization, which
    loses a pruned vocabulary's shared ids (see :func:`edgekit.models.handle.keep_pruned_vocabulary`)."""
    if not texts:
        return []
    return list(tokenizer([str(t) for t in texts], truncation=False, padding=False)["input_ids"])


def kept_ids(tokenizer, texts: Sequence[str], keep_first: int = 0) -> list[int]:
    """The old ids to keep, in order: special and added tokens, the first ``keep_first`` ids, and every
    id ``texts`` use."""
    used = {i for ids in _encode(tokenizer, texts) for i in ids}
    data = json.loads(tokenizer.backend_tokenizer.to_str())
    keep = used | {int(a["id"]) for a in data.get("added_tokens", [])} | set(tokenizer.all_special_ids)
    keep |= set(range(min(keep_first, _size(data))))
    return sorted(keep)


def _size(data: dict[str, Any]) -> int:
    vocab = data["model"]["vocab"]
    return len(vocab) if isinstance(vocab, list) else max(vocab.values()) + 1


def rewrite_tokenizer(data: dict[str, Any], new_id: dict[int, int]) -> dict[str, Any]:
    """tokenizer.json (parsed) with its ids renumbered by ``new_id`` (old -> new, kept ids only)."""
    data = copy.deepcopy(data)
    model = data["model"]
    kind = model.get("type")
    if kind in ("WordPiece", "BPE"):
        unk = model.get("unk_token")
        if unk is None or unk not in model["vocab"]:
            raise EdgekitError(
                f"this {kind} tokenizer has no unknown token, so a pruned token would have no row to go to; "
                "vocabulary pruning needs a tokenizer with one (BERT-like WordPiece, T5's Unigram)"
            )
        unk_new = new_id[model["vocab"][unk]]
        model["vocab"] = {token: new_id.get(old, unk_new) for token, old in model["vocab"].items()}
    elif kind == "Unigram":
        old_pieces = model["vocab"]
        kept = sorted(new_id, key=new_id.get)
        model["vocab"] = [old_pieces[old] for old in kept]
        if model.get("unk_id") is not None:
            model["unk_id"] = new_id[int(model["unk_id"])]
    else:
        raise EdgekitError(
            f"vocabulary pruning knows WordPiece, BPE and Unigram tokenizers, not {kind}; keep this model's vocabulary"
        )
    for token in data.get("added_tokens", []):
        token["id"] = new_id[int(token["id"])]
    if data.get("padding") and data["padding"].get("pad_id") is not None:
        data["padding"]["pad_id"] = new_id[int(data["padding"]["pad_id"])]
    data["post_processor"] = _renumber_processor(data.get("post_processor"), new_id)
    return data


def _renumber_processor(processor, new_id: dict[int, int]):
    if not processor:
        return processor
    processor = dict(processor)
    if processor.get("type") == "Sequence":
        processor["processors"] = [_renumber_processor(p, new_id) for p in processor["processors"]]
    for key in ("sep", "cls"):  # BertProcessing / RobertaProcessing: [token, id]
        if isinstance(processor.get(key), list):
            processor[key] = [processor[key][0], new_id[int(processor[key][1])]]
    for token in (processor.get("special_tokens") or {}).values():  # TemplateProcessing
        token["ids"] = [new_id[int(i)] for i in token["ids"]]
    return processor


def _new_tokenizer(tokenizer, data: dict[str, Any], new_id: dict[int, int]):
    """The transformers tokenizer for the rewritten tokenizer.json (slow-tokenizer files dropped, the
    config's added-token ids renumbered), loaded back as a user's stage folder would load it."""
    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory(prefix="edgekit-vocab-") as scratch:
        folder = Path(scratch)
        tokenizer.save_pretrained(folder)
        for name in ("vocab.txt", "spiece.model", "sentencepiece.bpe.model", "merges.txt", "vocab.json"):
            (folder / name).unlink(missing_ok=True)  # the old vocabulary must not be read back
        (folder / TOKENIZER_FILE).write_text(json.dumps(data, ensure_ascii=False))
        config_path = folder / "tokenizer_config.json"
        if config_path.is_file():
            config = json.loads(config_path.read_text())
            decoder = config.get("added_tokens_decoder") or {}
            config["added_tokens_decoder"] = {str(new_id[int(k)]): v for k, v in decoder.items()}
            config_path.write_text(json.dumps(config))
        return restore_pruned_vocabulary(AutoTokenizer.from_pretrained(folder, trust_remote_code=False), folder)


def _prune_embeddings(model, keep: list[int], new_id: dict[int, int]) -> dict[str, int]:
    """Keep rows ``keep`` of the input embedding (and of the LM head, tied or not); the ids in the
    model's config and generation config renumbered. Parameters removed, by part."""
    index = torch.tensor(keep, dtype=torch.long)
    old = model.get_input_embeddings()
    padding = old.padding_idx
    new = torch.nn.Embedding(
        len(keep), old.embedding_dim, padding_idx=new_id.get(padding) if padding is not None else None
    )
    new.weight.data = old.weight.data[index].clone()
    removed = {"embeddings": old.weight.numel() - new.weight.numel()}
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    model.set_input_embeddings(new)
    if head is not None and head.weight.shape[0] == old.weight.shape[0]:
        new_head = torch.nn.Linear(head.in_features, len(keep), bias=head.bias is not None)
        if tied and head.weight.data_ptr() == old.weight.data_ptr():
            new_head.weight = new.weight  # still one matrix
        else:
            new_head.weight.data = head.weight.data[index].clone()
            removed["lm_head"] = head.weight.numel() - new_head.weight.numel()
        if head.bias is not None:
            new_head.bias.data = head.bias.data[index].clone()
        model.set_output_embeddings(new_head)
    model.config.vocab_size = len(keep)
    for config in (model.config, getattr(model, "generation_config", None)):
        for key in CONFIG_IDS:
            value = getattr(config, key, None) if config is not None else None
            if isinstance(value, int):
                if value not in new_id:
                    raise EdgekitError(f"the model's {key} ({value}) is not a token the tokenizer knows as special")
                setattr(config, key, new_id[value])
    return removed


def prune_vocab(handle, train, amount: float, calib_samples: int, check=None, keep_first: int = 0) -> dict[str, Any]:
    """The ``vocab`` pruner: rebuild ``handle``'s embeddings and tokenizer for the tokens ``train``
    uses; the proof on ``check`` (validation data); what it kept and saved."""
    if handle.family != "hf" or handle.tokenizer is None:
        raise EdgekitError("--method vocab needs a text model with a tokenizer (BERT-like encoders, T5)")
    if not hasattr(handle.tokenizer, "backend_tokenizer"):
        raise EdgekitError("--method vocab needs a fast tokenizer (tokenizer.json); this model has a slow one only")
    model, tokenizer = handle.module, handle.tokenizer
    texts = [str(t) for t in train.items]
    if handle.spec.generates:
        texts += [str(t) for t in train.labels]  # the targets the decoder must still produce
    keep = kept_ids(tokenizer, texts, keep_first)
    before = int(model.get_input_embeddings().weight.shape[0])
    if len(keep) >= before:
        raise EdgekitError(f"the training data uses all {before} tokens of the vocabulary; there is nothing to prune")
    new_id = {old: i for i, old in enumerate(keep)}
    old_model, old_tokenizer = copy.deepcopy(model).eval(), tokenizer
    data = rewrite_tokenizer(json.loads(tokenizer.backend_tokenizer.to_str()), new_id)
    removed = _prune_embeddings(model, keep, new_id)
    handle.tokenizer = _new_tokenizer(tokenizer, data, new_id)
    bytes_per = model.get_input_embeddings().weight.element_size()
    report = {
        "vocab_before": before,
        "vocab_after": len(keep),
        "parameters_removed": sum(removed.values()),
        "parameters_removed_by_part": removed,
        "bytes_saved": sum(removed.values()) * bytes_per,
        "keep_first": keep_first,
    }
    log(
        f"  vocabulary {before} -> {len(keep)} tokens: {sum(removed.values()) / 1e6:.2f} M parameters, "
        f"{report['bytes_saved'] / 1e6:.1f} MB (fp32) removed"
    )
    if check is not None and len(check):
        report["check"] = verify(handle, old_model, old_tokenizer, check, keep, new_id)
    return report


@torch.no_grad()
def verify(handle, old_model, old_tokenizer, split, keep: list[int], new_id: dict[int, int], limit: int = 512) -> dict:
    """On ``split``: old and new ids name the same vectors (pruned ones [UNK]), and the logits on
    examples whose tokens (and, for seq2seq, whose targets' tokens) are all kept match the unpruned
    model's."""
    texts = [str(t) for t in split.items[:limit]]
    old_ids, new_ids = _encode(old_tokenizer, texts), _encode(handle.tokenizer, texts)
    if handle.spec.generates:
        targets = [str(t) for t in split.labels[:limit]]
        target_ids = _encode(old_tokenizer, targets)
    old_unk, new_unk = old_tokenizer.unk_token_id, handle.tokenizer.unk_token_id
    old_table, new_table = old_model.get_input_embeddings().weight, handle.module.get_input_embeddings().weight
    total = unk_before = pruned = checked = same = pruned_checked = to_unk = resplit = 0
    all_kept: list[int] = []
    for row, (a, b) in enumerate(zip(old_ids, new_ids)):
        total += len(a)
        unk_before += sum(i == old_unk for i in a)
        gone = [i for i in a if i not in new_id]
        pruned += len(gone)
        if len(a) != len(b):  # only a Unigram tokenizer re-splits, and only a text with a pruned piece
            resplit += 1
            continue
        for old, new in zip(a, b):
            if old in new_id:
                checked += 1
                same += bool(new == new_id[old] and torch.equal(old_table[old], new_table[new]))
            else:
                pruned_checked += 1
                to_unk += int(new == new_unk)
        if not gone and (not handle.spec.generates or all(i in new_id for i in target_ids[row])):
            all_kept.append(row)
    result = {
        "texts": len(texts),
        "tokens": total,
        "unk_share_before": unk_before / max(total, 1),
        "pruned_token_share": pruned / max(total, 1),  # became [UNK] (WordPiece, BPE) or re-split (Unigram)
        "kept_tokens_checked": checked,
        "kept_tokens_same_vector": same,
        "pruned_tokens_checked": pruned_checked,
        "pruned_tokens_to_unk": to_unk,
        "texts_resplit": resplit,
        "examples_all_kept": len(all_kept),
    }
    result["unk_share_after"] = (unk_before + to_unk) / max(total, 1)
    if all_kept:
        result["max_abs_logit_diff_all_kept"] = _logit_diff(handle, old_model, old_tokenizer, split, all_kept, keep)
    return result


def _inputs(encoded, handle) -> dict[str, torch.Tensor]:
    """The tokenizer's output the model takes (encoder-decoders take no token_type_ids)."""
    names = ("input_ids", "attention_mask") if handle.spec.generates else tuple(encoded)
    return {k: encoded[k] for k in names if k in encoded}


def _logit_diff(handle, old_model, old_tokenizer, split, rows: list[int], keep: list[int]) -> float:
    """Largest |old - new| logit on the given rows (seq2seq: teacher-forced, over the kept tokens)."""
    model = handle.module.eval()
    worst = 0.0
    for start in range(0, len(rows), 32):
        chunk = rows[start : start + 32]
        texts = [str(split.items[i]) for i in chunk]
        old_in = _inputs(old_tokenizer(texts, return_tensors="pt", padding=True), handle)
        new_in = _inputs(handle.tokenizer(texts, return_tensors="pt", padding=True), handle)
        if handle.spec.generates:
            targets = [str(split.labels[i]) for i in chunk]
            old_t = old_tokenizer(targets, return_tensors="pt", padding=True)["input_ids"]
            new_t = handle.tokenizer(targets, return_tensors="pt", padding=True)["input_ids"]
            if old_t.shape != new_t.shape:
                continue
            a = old_model(**old_in, labels=old_t).logits[..., keep]
            b = model(**new_in, labels=new_t).logits
        else:
            a, b = old_model(**old_in).logits, model(**new_in).logits
        worst = max(worst, float((a - b).abs().max()))
    return worst
