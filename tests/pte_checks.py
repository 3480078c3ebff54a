"""What the ExecuTorch test files share: one .pte bundle per case of the tiny model stages, exported once
per worker, and the checks every exported case gets."""

from __future__ import annotations

import json

import numpy as np

_BUILT: dict[tuple, object] = {}


def export_pte(models, model: str, precision: str, mode: str | None = None):
    """One .pte bundle per case, exported once per module (lowering takes tens of seconds)."""
    from edgekit import stages

    key = (model, precision, mode)
    if key not in _BUILT:
        out = models["root"] / "pte" / "-".join(filter(None, key))
        stages.export(
            str(models[model]),
            out,
            preset_name=None,
            precision=precision,
            fmt="executorch",
            mode=mode,
            allow_drop=True,
            calib_samples=16,  # static CNN int8: calibration batches run through the observed graph
        )
        _BUILT[key] = out
    return _BUILT[key]


def check_pte_bundle(models, model: str, precision: str, mode: str | None) -> None:
    """Export (once) and check one case: manifest, checksums, delegates, parity, int8 details, the runtime."""
    from edgekit.artifacts import sha256_file
    from edgekit.runtime import Bundle

    out = export_pte(models, model, precision, mode)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["format"] == "executorch" and manifest["precision"] == precision
    assert manifest["versions"]["executorch"] == "1.5.1"
    assert manifest["preprocessing"]["max_batch"] >= 1
    names = [g["name"] for g in manifest["graphs"]]
    assert names == (["encoder", "decoder"] if model == "t5" else ["model"])
    for graph in manifest["graphs"]:
        assert graph["file"].endswith(".pte") and sha256_file(out / graph["file"]) == graph["sha256"]
        programs = manifest["executorch"][graph["name"]]
        if model == "t5" and programs.get("fallback"):  # int8 decoder: XNNPACK cannot partition it (cycles)
            assert programs["delegates"] == [] and "portable kernels run this graph" in programs["fallback"]
            assert "aten::mm.out" in programs["portable_operators"]
            continue
        assert programs["delegates"] == ["XnnpackBackend"] and programs["delegated_subgraphs"] >= 1
    assert manifest["parity"]["fp32"]["passed"], manifest["parity"]["fp32"]
    if precision == "int8":
        quant = manifest["quantization"]
        cnn = model in ("resnet18", "mobilenet_v2")
        assert quant["mode"] == (mode or ("static" if cnn else "dynamic"))
        if cnn:  # calibrated on the training images; the convolution reading the image stays fp32
            assert quant["calibration_batches"] >= 1 and quant["first_conv_fp32"]
            shift = quant["output_bias_correction"]  # one mean int8 shift per class, removed at the output
            assert len(shift) == 10 and all(np.isfinite(shift)) and any(v != 0 for v in shift)
        lossy = manifest["parity"]["int8"]
        assert lossy["examples"] > 0 and np.isfinite(lossy["snr_db"])
        if model in ("bert", "vit"):  # untrained CNN/T5 logits are near ties; trained ones are held in the benchmark
            assert lossy["passed"], lossy
        assert manifest["sizes"]["model_bytes"] < manifest["sizes"]["fp32_model_bytes"]
        if model in ("bert", "t5"):  # word (and position) embeddings are int8 rows
            assert quant["quantized_embeddings"] >= 1
        if model == "bert":  # the position table keeps the rows a planned sequence (<= max_length) can index
            longest = manifest["preprocessing"]["max_length"]  # the tiny BERT has 128 positions
            kept = {"bert.embeddings.position_embeddings": longest} if longest < 128 else None
            assert quant.get("position_rows_kept") == kept
            ops = {op for p in manifest["executorch"].values() for op in p["portable_operators"]}
            assert "quantized_decomposed::embedding_byte.dtype_out" in ops
    bundle = Bundle(out)
    assert bundle.session.get_providers()[0].startswith("ExecuTorch 1.5.1 (XNNPACK")
    if model == "t5":
        texts = bundle.generate(["paris rome moon", "radio river"], max_new_tokens=4)
        assert len(texts) == 2 and all(isinstance(t, str) for t in texts)
    elif model == "bert":
        # a batch larger than the program's planned maximum runs in slices, same logits as one by one
        texts = [f"who wrote hamlet number {i} ?" for i in range(manifest["preprocessing"]["max_batch"] + 3)]
        many = bundle.run(bundle.encode(texts))
        assert many.shape == (len(texts), 3)
        single = np.concatenate([bundle.run(bundle.encode([t])) for t in texts[:2]])
        assert np.allclose(many[:2], single, atol=1e-4)
    else:
        image = np.random.default_rng(0).integers(0, 255, (20, 20, 3), dtype=np.uint8)
        assert bundle.predict([image, image]).shape == (2, 10)
