"""The loaded base model made ready for training: frozen and cast, pivotal-tuning tokens added,
memory options on, the trained network (LoRA family or full fine-tune) built, and the VAE encode
function the latent cache uses.

`prepare` calls these in order after the model loads. Frozen weights go to half precision only
on a GPU with LoRA training (CPU keeps fp32 under autocast; full fine-tuning keeps an fp32
master copy), and the VAE always stays fp32, since the SD VAE overflows in fp16.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from lorakiln.config.schema import RunConfig

if TYPE_CHECKING:
    from lorakiln.models.bundle import ModelBundle
    from lorakiln.networks.pivotal import PivotalEmbeddings


def weight_dtype_for(cfg: RunConfig, device: torch.device, autocast_dtype: torch.dtype | None) -> torch.dtype:
    """The dtype of the frozen weights: the autocast dtype on CUDA for LoRA training, else fp32."""
    half_ok = autocast_dtype is not None and device.type == "cuda" and cfg.train.mode == "lora"
    return autocast_dtype if half_ok and autocast_dtype is not None else torch.float32


def freeze(bundle: ModelBundle, device: torch.device, weight_dtype: torch.dtype) -> None:
    """No gradients, eval mode and the device for every base-model part; the VAE stays fp32."""
    for module in (bundle.unet, *bundle.text_encoders):
        module.requires_grad_(False)
        # Only cast when needed: diffusers warns on any `.to(dtype)` of a loaded model.
        module.to(device) if weight_dtype == torch.float32 else module.to(device, dtype=weight_dtype)
        module.eval()
    bundle.vae.requires_grad_(False)
    bundle.vae.to(device)  # kept fp32: the SD VAE overflows in fp16
    bundle.vae.eval()


def add_pivotal_tokens(cfg: RunConfig, bundle: ModelBundle) -> PivotalEmbeddings | None:
    """New tokens `<s0><s1>…` in every tokenizer/encoder (diffusers advanced SDXL recipe, "Pivotal
    Tuning"), or None when pivotal tuning is off."""
    p = cfg.pivotal
    if not p.train_text_encoder_ti:
        return None
    from lorakiln.networks.pivotal import add_new_tokens

    return add_new_tokens(bundle.tokenizers, bundle.text_encoders, p.token_abstraction,
                          p.num_new_tokens_per_abstraction, init=p.initializer_concept or "random",
                          seed=cfg.train.seed, std_pull=p.ti_std_pull, fix_pooling=p.ti_fix_pooling)


def build_network(cfg: RunConfig, bundle: ModelBundle, train_te: bool, device: torch.device,
                  log: Callable[[str], None] | None = None) -> Any:
    """The trained network on `device`: every weight (`train.mode = "full"`) or an adapter of
    `network.network_module` on the layers `network.target_modules` picks (or, with
    `network.dim_from_weights`, the file's own), with a seeded init (kaiming down, zero up),
    optionally started from `network.network_weights`; `log` hears which layers and what loaded."""
    torch.manual_seed(cfg.train.seed)
    net = cfg.network
    if cfg.train.mode == "full":
        from lorakiln.networks.full import FullNetwork

        network: Any = FullNetwork(bundle.family, bundle.unet, bundle.text_encoders, train_te)
    else:
        from lorakiln.networks.network import create_lora_network
        from lorakiln.networks.targets import TargetRule

        dim, ranks = net.network_dim, None
        if net.dim_from_weights and net.network_weights:
            from lorakiln.networks.weights_plan import read_file_modules

            file = read_file_modules(net.network_weights)
            ranks = {k: r for k, r in file.ranks.items() if r is not None}
            dim = file.main_rank() or dim
        rule = TargetRule(net.target_modules, tuple(net.target_include), tuple(net.target_exclude))
        network = create_lora_network(bundle.unet, bundle.text_encoders, bundle.family,
                                      dim=dim, alpha=net.network_alpha,
                                      dropout=net.network_dropout, train_text_encoder=train_te,
                                      algo=net.network_module, conv_dim=net.conv_dim,
                                      conv_alpha=net.conv_alpha, use_tucker=net.use_tucker,
                                      lokr_factor=net.lokr_factor,
                                      lokr_decompose_both=net.lokr_decompose_both, dora_wd=net.dora_wd,
                                      targets=rule, module_ranks=ranks)
        if log:
            counts = ", ".join(f"{n} {part}" for part, n in network.counts().items())
            how = "from network_weights (dim_from_weights)" if ranks is not None else rule.describe()
            log(f"network: {len(network)} modules ({counts}); layers: {how}")
    if net.network_weights:
        from lorakiln.networks.export import load_network_weights

        report = load_network_weights(network, net.network_weights)
        if log:
            log(report)
    network.to(device)
    return network


def enable_memory_options(cfg: RunConfig, bundle: ModelBundle, train_te: bool) -> None:
    """`train.sdpa = false` (classic attention) and gradient checkpointing, on the U-Net and, when
    they run with gradients, the text encoders."""
    if not cfg.train.sdpa:
        from diffusers.models.attention_processor import AttnProcessor

        bundle.unet.set_attn_processor(AttnProcessor())
    if cfg.train.gradient_checkpointing:
        bundle.unet.enable_gradient_checkpointing()
        bundle.unet.train()  # diffusers only checkpoints in training mode
        if train_te:
            for te in bundle.text_encoders:
                te.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
                te.train()


def encode_fn(vae: Any) -> Callable[[torch.Tensor], torch.Tensor]:
    """VAE encode → scaled latents. The distribution's mode (mean) is used, so a cached latent is
    a pure function of the image (the SD VAE's std is tiny; kohya samples instead)."""
    @torch.no_grad()
    def encode(pixels: torch.Tensor) -> torch.Tensor:
        dist = vae.encode(pixels.to(vae.device, vae.dtype)).latent_dist
        return (dist.mode() * vae.config.scaling_factor).float().cpu()
    return encode
