"""ZipLoRA (`lorakiln lora ziplora`): the column axis, the exact kohya file, SD1/SDXL runs,
"keeps each effect better than a plain average", and the CLI."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from lorakiln.cli import main
from lorakiln.lora_tools.files.lorafile import KohyaLoRA, read_kohya_lora
from lorakiln.lora_tools.lowrank.lowrank import LowRank
from lorakiln.lora_tools.ziplora.modules import ZipModule
from lorakiln.lora_tools.ziplora.ziplora import ZipLoRAOptions, ZipLoRAResult, ziplora_merge
from lorakiln.models.conditioning import encode_text
from lorakiln.models.family import SD1, SDXL, ModelFamily
from lorakiln.models.tiny import build_tiny_sd1_bundle
from lorakiln.models.tiny_sdxl import build_tiny_sdxl_bundle
from lorakiln.networks.apply import apply_lora_file, resolve_target
from lorakiln.networks.export import kohya_state_dict
from lorakiln.networks.network import create_lora_network

PROMPTS = ("a sks dog", "a cat in oil painting style")


def _lora_file(bundle: Any, family: ModelFamily, path: Path, seed: int, pattern: str, *, scale: float = 0.3,
               conv_dim: int | None = None) -> Path:
    """A kohya file with random non-zero `up`s (so it has an effect) on the keys matching `pattern`."""
    net = create_lora_network(bundle.unet, bundle.text_encoders, family, dim=4, alpha=2, conv_dim=conv_dim,
                              conv_alpha=2)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, m in net.loras():  # both factors from `gen`: the file depends on `seed` alone
            down = m.lora_down.weight
            down.copy_(torch.randn(down.shape, generator=gen) * (3 * down[0].numel()) ** -0.5)  # kaiming std
            m.lora_up.weight.copy_(torch.randn(m.lora_up.weight.shape, generator=gen) * scale)
    tensors = {k: v for k, v in kohya_state_dict(net, "float").items() if re.search(pattern, k)}
    net.remove()
    tags = json.dumps({f"10_{path.stem}": {path.stem: 10}})
    metadata = {"ss_base_model_version": family.base_model_version, "ss_tag_frequency": tags}
    save_file(tensors, str(path), metadata)
    return path


def _expected_delta(key: str, inputs: tuple[KohyaLoRA, KohyaLoRA], result: ZipLoRAResult) -> torch.Tensor:
    """m_c ⊙ ΔW_c + m_s ⊙ ΔW_s from the input files and the learned mergers, the merger scaling
    ΔW's columns (input axis, dim 1); a module only one input has is that input's ΔW."""
    mergers = result.mergers.get(key, (None, None))
    total = torch.zeros(())
    for lora, m in zip(inputs, mergers, strict=True):
        if key in lora.modules:
            delta = lora.lora_factors(key).delta()
            total = total + (delta if m is None else delta * m.view(1, -1, *([1] * (delta.dim() - 2))))
    return total


def _unet_out(bundle: Any, prompt: str) -> torch.Tensor:
    """U-Net output on fixed inputs with the text encoded through the bundle's (hooked) encoders."""
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(1, 4, 8, 8, generator=gen)
    hidden, pooled = encode_text(bundle, [prompt])
    extra = None
    if pooled is not None:
        extra = {"text_embeds": pooled, "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]])}
    with torch.no_grad():
        return bundle.unet(x, torch.tensor([500]), hidden, added_cond_kwargs=extra).sample


def _assert_file_exact_and_loadable(result: ZipLoRAResult, inputs: tuple[KohyaLoRA, KohyaLoRA],
                                    build: Any) -> None:
    merged = read_kohya_lora(result.path)
    assert set(merged.modules) == set(inputs[0].modules) | set(inputs[1].modules)
    fused = build(seed=0)
    with torch.no_grad():
        for key in merged.modules:
            expected = _expected_delta(key, inputs, result)
            torch.testing.assert_close(merged.lora_factors(key).delta(), expected, atol=1e-5, rtol=1e-4)
            target = resolve_target(fused, key)
            target.weight += expected.reshape(target.weight.shape)
    loaded = build(seed=0)
    applied = apply_lora_file(loaded, result.path)
    assert len(applied.modules) == len(merged.modules)
    for prompt in PROMPTS:
        torch.testing.assert_close(_unet_out(loaded, prompt), _unet_out(fused, prompt), atol=1e-4, rtol=1e-4)


# -- the column axis, without a model -------------------------------------------------------------


@pytest.mark.parametrize("layer", [nn.Linear(6, 5), nn.Conv2d(6, 5, 3, padding=1)])
def test_module_merge_scales_input_columns_and_factors_are_exact(layer: nn.Module) -> None:
    gen = torch.Generator().manual_seed(0)
    tail = (3, 3) if isinstance(layer, nn.Conv2d) else ()
    up_tail = (1, 1) if tail else ()

    def factors(rank: int, alpha: float) -> LowRank:
        up = torch.randn(5, rank, *up_tail, generator=gen)
        return LowRank(up, torch.randn(rank, 6, *tail, generator=gen), alpha, 1.0)

    subject, style = factors(2, 1.0), factors(3, 3.0)
    zm = ZipModule("k", layer, subject, style, torch.device("cpu"))
    with torch.no_grad():
        zm.m_c.copy_(torch.rand(6, generator=gen))  # type: ignore[union-attr]
        zm.m_s.copy_(torch.rand(6, generator=gen))  # type: ignore[union-attr]
    view = (1, -1, *([1] * len(tail)))  # one merger entry per input column (channel)
    m_c, m_s = zm.m_c.detach().view(view), zm.m_s.detach().view(view)  # type: ignore[union-attr]
    expected = subject.delta() * m_c + style.delta() * m_s
    torch.testing.assert_close(zm.merged_delta(), expected)
    written = zm.merged_factors()
    assert written.rank == 5 and written.alpha == 5.0  # rank concatenation, alpha = rank
    torch.testing.assert_close(written.delta(), expected)
    # the hook adds exactly that delta to the layer's output
    x = torch.randn(2, 6, 4, 4, generator=gen) if tail else torch.randn(2, 6, generator=gen)
    with torch.no_grad():
        base = layer(x)
        zm.mode = "merged"
        zm.attach()
        hooked = layer(x)
        zm.detach()
        fused = (F.conv2d(x, layer.weight + expected, layer.bias, padding=1) if tail
                 else F.linear(x, layer.weight + expected, layer.bias))
    torch.testing.assert_close(hooked, fused, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(layer(x), base)  # detached: the base layer again


# -- SD 1.x: the measured claim, exactness, loading ----------------------------------------------


@pytest.fixture(scope="module")
def sd1_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[ZipLoRAResult, tuple[KohyaLoRA, KohyaLoRA]]:
    """Two LoRAs on the same cross-attention and text-encoder modules (their effect goes through the
    text, as a trigger-word LoRA's mostly does), merged in 20 steps at lr 0.05. Measured (effect kept,
    subject / style) for LoRA seeds (3, 4): ZipLoRA 0.84 / 0.69, plain average 0.35 / 0.08, plain sum
    0.25 / −0.19; seeds (1, 2): 0.43 / 0.73 vs 0.26 / 0.47; seeds (5, 6): 0.75 / 0.25 vs 0.54 / 0.00."""
    folder = tmp_path_factory.mktemp("ziplora_sd1")
    bundle = build_tiny_sd1_bundle(seed=0)
    files = [_lora_file(bundle, SD1, folder / f"{name}.safetensors", seed, "attn2|lora_te", scale=0.6)
             for name, seed in (("subject", 3), ("style", 4))]
    options = ZipLoRAOptions(steps=20, lr=0.05, resolution=64, latents="random", batch_size=2, seed=0)
    result = ziplora_merge(bundle, files[0], files[1], *PROMPTS, folder / "zip.safetensors", options,
                           log=print)
    return result, (read_kohya_lora(files[0]), read_kohya_lora(files[1]))


def test_sd1_ziplora_keeps_each_effect_better_than_a_plain_average(sd1_run: Any) -> None:
    result, _ = sd1_run
    kept = result.effect_kept
    for concept in ("subject", "style"):
        assert kept["merged"][concept] > kept["average"][concept] + 0.3, kept
        # held-out reconstruction error fell from the starting point m = 1 (the plain sum)
        assert kept["merged"][concept] > kept["sum"][concept] + 0.3, kept
    history = [h["loss"] for h in result.history]
    assert len(history) == 20 and sum(history[-3:]) < 0.8 * sum(history[:3]), history


def test_sd1_file_is_the_exact_merge_and_loads(sd1_run: Any) -> None:
    result, inputs = sd1_run
    assert result.shared == len(inputs[0].modules) and result.only_subject == result.only_style == 0
    _assert_file_exact_and_loadable(result, inputs, build_tiny_sd1_bundle)
    with safe_open(str(result.path), "pt") as fh:
        md = fh.metadata()
    record = json.loads(md["lorakiln_ziplora"])
    assert record["inputs"]["subject"]["prompt"] == PROMPTS[0] and record["options"]["steps"] == 20
    assert record["options"]["lam"] == 0.01
    assert set(record["final_loss"]) >= {"subject_mse", "style_mse", "alignment"}
    assert record["effect_kept"]["ZipLoRA"] == result.effect_kept["merged"]
    assert md["ss_base_model_version"] == SD1.base_model_version and md["ss_network_dim"] == "8"
    assert set(json.loads(md["ss_tag_frequency"])) == {"subject: 10_subject", "style: 10_style"}


# -- SDXL: generated latents, conv (LoCon) modules, single-input modules --------------------------


def test_sdxl_merge_with_generated_latents_is_exact_and_keeps_single_modules(tmp_path: Path) -> None:
    bundle = build_tiny_sdxl_bundle(seed=0)
    pattern = "attn2_to_(k|v)|input_blocks_1_0_in_layers_2|lora_te1_text_model_encoder_layers_0_"
    subject = _lora_file(bundle, SDXL, tmp_path / "subject.safetensors", 1,
                         pattern + "|lora_te2_text_model_encoder_layers_0_", conv_dim=2)
    style = _lora_file(bundle, SDXL, tmp_path / "style.safetensors", 2, pattern, conv_dim=2)
    options = ZipLoRAOptions(steps=3, resolution=64, latents="generated", sample_steps=2, num_latents=1,
                             eval_latents=1)
    result = ziplora_merge(bundle, subject, style, *PROMPTS, tmp_path / "zip.safetensors", options, log=print)
    inputs = (read_kohya_lora(subject), read_kohya_lora(style))
    assert result.family == "sdxl" and result.only_style == 0
    assert result.only_subject == len(set(inputs[0].modules) - set(inputs[1].modules)) > 0
    assert any(not torch.equal(m_c, torch.ones_like(m_c)) for m_c, _ in result.mergers.values())  # moved
    conv = next(k for k in result.mergers if "in_layers_2" in k)  # a 3×3 LoCon module both inputs have
    channels = result.mergers[conv][0].numel()
    assert read_kohya_lora(result.path).lora_factors(conv).down.shape[1:] == (channels, 3, 3)
    _assert_file_exact_and_loadable(result, inputs, build_tiny_sdxl_bundle)
    written = read_kohya_lora(result.path)
    for key in set(inputs[0].modules) - set(inputs[1].modules):  # kept as they are, alpha included
        assert key not in result.mergers
        for name in ("lora_down.weight", "lora_up.weight", "alpha"):
            assert torch.equal(written.modules[key][1][name], inputs[0].modules[key][1][name]), (key, name)


# -- CLI ------------------------------------------------------------------------------------------


def test_cli_merges_and_reports_effect_kept(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bundle = build_tiny_sd1_bundle(seed=0)  # the same weights `tiny:sd1` loads
    files = [_lora_file(bundle, SD1, tmp_path / f"{n}.safetensors", s, "attn2")
             for n, s in (("a", 1), ("b", 2))]
    out = tmp_path / "zip.safetensors"
    rc = main(["lora", "ziplora", "--model", "tiny:sd1", "--subject", str(files[0]), "--style", str(files[1]),
               "--subject-prompt", PROMPTS[0], "--style-prompt", PROMPTS[1], str(out), "--steps", "2",
               "--lr", "0.05", "--lambda", "0.02", "--latents", "random",
               "--seed", "3"])
    text = capsys.readouterr().out
    assert rc == 0 and out.is_file()
    assert "ZipLoRA written" in text and "effect kept" in text
    assert re.search(r"ZipLoRA\s+-?\d\.\d{3}\s+-?\d\.\d{3}", text)
    assert "plain average" in text and "plain sum" in text
    options = json.loads(read_kohya_lora(out).metadata["lorakiln_ziplora"])["options"]
    assert options["steps"] == 2 and options["lam"] == 0.02 and options["seed"] == 3


def test_cli_refuses_bad_inputs_before_loading_a_model(tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    sd1 = build_tiny_sd1_bundle(seed=0)
    a = _lora_file(sd1, SD1, tmp_path / "a.safetensors", 1, "attn2")
    b = _lora_file(sd1, SD1, tmp_path / "b.safetensors", 2, "attn2")
    xl = _lora_file(build_tiny_sdxl_bundle(seed=0), SDXL, tmp_path / "xl.safetensors", 3, "attn2")
    loha = tmp_path / "loha.safetensors"
    key = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"
    save_file({f"{key}.hada_w1_a": torch.ones(4, 2), f"{key}.hada_w1_b": torch.ones(2, 4),
               f"{key}.hada_w2_a": torch.ones(4, 2), f"{key}.hada_w2_b": torch.ones(2, 4)}, str(loha),
              {"ss_base_model_version": SD1.base_model_version})

    peft = tmp_path / "peft.safetensors"
    module = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k"
    save_file({f"{module}.lora_A.weight": torch.ones(4, 32), f"{module}.lora_B.weight": torch.ones(32, 4)},
              str(peft))

    def run(subject: Path, style: Path, out: Path, *extra: str) -> str:
        rc = main(["lora", "ziplora", "--model", "no/such-model", "--subject", str(subject),
                   "--style", str(style), "--subject-prompt", "a", "--style-prompt", "b", str(out), *extra])
        assert rc == 2
        return capsys.readouterr().err

    assert "no such LoRA file" in run(tmp_path / "missing.safetensors", b, tmp_path / "o.safetensors")
    assert "never writes over its inputs" in run(a, b, b)
    assert "same file" in run(a, a, tmp_path / "o.safetensors")
    assert "sd1 LoRA but xl.safetensors is a sdxl LoRA" in run(a, xl, tmp_path / "o.safetensors")
    assert "LoHa module" in run(a, loha, tmp_path / "o.safetensors")
    assert "lorakiln lora convert" in run(peft, a, tmp_path / "o.safetensors")
    assert "--steps must be >= 0" in run(a, b, tmp_path / "o.safetensors", "--steps", "-1")
    (tmp_path / "exists.safetensors").write_bytes(b"x")
    assert "pass --force" in run(a, b, tmp_path / "exists.safetensors")
    assert not (tmp_path / "o.safetensors").exists()
