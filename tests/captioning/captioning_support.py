"""Shared builders and constants of the captioning tests (a uniquely named module, so `from ... import`
never picks up another folder's conftest)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

MakeImage = Callable[..., Path]

BLIP_WORDS = ("a", "picture", "of", "man", "woman", "dog", "cat", "red", "blue", "green", "sitting", "standing",
              "on", "the", "rock", "beach", "with", "in", "shirt", "hat", "orange", "smiling", "near", "tree", "sky")
#: [DEC] + "a picture of": the tokens BLIP primes the decoder with, counted by min_length.
BLIP_PRIMED_TOKENS = 4

#: selected_tags.csv rows (name, category) and each tag's logit as (w_B, w_G, w_R, bias) on the
#: per-channel mean in [0, 1]. Pure red (BGR mean 0, 0, 1): long_hair .993, solo .622,
#: hatsune_miku .881, rating "general". Pure blue: blue_sky .953, rating "explicit". Green: ^_^.
WD14_TAGS: tuple[tuple[str, int, tuple[float, float, float, float]], ...] = (
    ("general", 9, (0.0, 0.0, 0.0, 1.0)),
    ("sensitive", 9, (0.0, 0.0, 0.0, 0.0)),
    ("explicit", 9, (4.0, 0.0, 0.0, -1.0)),
    ("long_hair", 0, (0.0, 0.0, 10.0, -5.0)),
    ("solo", 0, (0.0, 0.0, 2.0, -1.5)),
    ("blue_sky", 0, (10.0, 0.0, 0.0, -7.0)),
    ("^_^", 0, (0.0, 10.0, 0.0, -2.5)),
    ("hatsune_miku", 4, (0.0, 0.0, 4.0, -2.0)),
)
WD14_SIZE = 16


def build_tiny_blip(dest: Path, seed: int = 0) -> Path:
    """Save a tiny random BLIP captioner (model + BlipProcessor) into `dest`; returns `dest`."""
    from transformers import BertTokenizer, BlipConfig, BlipForConditionalGeneration, BlipProcessor
    from transformers.models.blip import BlipImageProcessorPil

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]"]
    vocab = specials + list(dict.fromkeys(BLIP_WORDS))
    vocab_dir = dest.parent / f"{dest.name}-vocab"
    vocab_dir.mkdir(parents=True, exist_ok=True)
    (vocab_dir / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    # Like Salesforce's tokenizer: BERT uncased plus a [DEC] token that starts the decoder.
    tokenizer = BertTokenizer.from_pretrained(vocab_dir, bos_token="[DEC]")
    processor = BlipProcessor(image_processor=BlipImageProcessorPil(size={"height": 32, "width": 32}),
                              tokenizer=tokenizer)
    config = BlipConfig(
        vision_config={"image_size": 32, "patch_size": 8, "hidden_size": 32, "intermediate_size": 64,
                       "num_hidden_layers": 2, "num_attention_heads": 2},
        text_config={"vocab_size": len(vocab), "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                     "num_attention_heads": 2, "encoder_hidden_size": 32, "max_position_embeddings": 128,
                     # the real config's ids: [DEC] starts, [SEP] ends (BLIP passes it as eos), [PAD] pads
                     "bos_token_id": vocab.index("[DEC]"), "sep_token_id": vocab.index("[SEP]"),
                     "pad_token_id": vocab.index("[PAD]"), "eos_token_id": vocab.index("[CLS]")},
        projection_dim=32)
    torch.manual_seed(seed)
    model = BlipForConditionalGeneration(config).eval()
    with torch.no_grad():
        bias = model.text_decoder.cls.predictions.bias
        bias.zero_()
        bias[[vocab.index(t) for t in specials if t != "[SEP]"]] = -1e4
        bias[vocab.index("[SEP]")] = 8.0  # end the caption as soon as min_length allows
    model.save_pretrained(dest)
    processor.save_pretrained(dest)
    return dest


def build_tiny_wd14(dest: Path, *, batch: int | str = "batch",
                    tags: tuple[tuple[str, int, tuple[float, float, float, float]], ...] = WD14_TAGS) -> Path:
    """Save `model.onnx` + `selected_tags.csv` of the colour tagger into `dest`; returns `dest`."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weights = np.array([t[2][:3] for t in tags], dtype=np.float32).T  # [3 (BGR), tags]
    bias = np.array([t[2][3] for t in tags], dtype=np.float32)
    nodes = [
        helper.make_node("ReduceMean", ["input_1"], ["mean"], axes=[1, 2], keepdims=0),
        helper.make_node("Mul", ["mean", "scale"], ["unit"]),
        helper.make_node("MatMul", ["unit", "W"], ["logits0"]),
        helper.make_node("Add", ["logits0", "b"], ["logits"]),
        helper.make_node("Sigmoid", ["logits"], ["predictions_sigmoid"]),
    ]
    graph = helper.make_graph(
        nodes, "tiny_wd14",
        [helper.make_tensor_value_info("input_1", TensorProto.FLOAT, [batch, WD14_SIZE, WD14_SIZE, 3])],
        [helper.make_tensor_value_info("predictions_sigmoid", TensorProto.FLOAT, [batch, len(tags)])],
        initializer=[numpy_helper.from_array(np.array(1 / 255, dtype=np.float32), "scale"),
                     numpy_helper.from_array(weights, "W"), numpy_helper.from_array(bias, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    onnx.checker.check_model(model)
    dest.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(dest / "model.onnx"))
    rows = ["tag_id,name,category,count"] + [f"{1000 + i},{name},{cat},{500 - i}" for i, (name, cat, _) in
                                             enumerate(tags)]
    (dest / "selected_tags.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return dest
