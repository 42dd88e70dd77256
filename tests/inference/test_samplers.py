"""A1111 sampler names → diffusers schedulers built from an SD1-style DDPM config."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from diffusers import DDPMScheduler

from lorakiln.errors import ConfigError
from lorakiln.inference.samplers import (
    KOHYA_SAMPLERS,
    make_scheduler,
    resolve_sampler,
    sampler_names,
    schedule_type_names,
)

HAS_SCIPY = importlib.util.find_spec("scipy") is not None
NEEDS_SCIPY = {"LMS", "LMS Karras"}


@pytest.fixture(scope="module")
def sd1_config() -> dict:
    # SD 1.5's scheduler_config.json values (scaled_linear betas, epsilon, leading + offset 1).
    s = DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                      beta_schedule="scaled_linear", clip_sample=False, steps_offset=1,
                      timestep_spacing="leading", prediction_type="epsilon")
    return dict(s.config)


@pytest.mark.parametrize("name", sampler_names())
def test_every_name_builds_and_sets_timesteps(name: str, sd1_config: dict) -> None:
    if name in NEEDS_SCIPY and not HAS_SCIPY:
        with pytest.raises(ConfigError, match="scipy"):
            make_scheduler(name, sd1_config)
        return
    sched = make_scheduler(name, sd1_config)
    sched.set_timesteps(10)
    assert len(sched.timesteps) >= 10
    assert sched.config.prediction_type == "epsilon" and sched.config.beta_schedule == "scaled_linear"


@pytest.mark.parametrize("name", [n for n in sampler_names() if n.endswith("Karras") and n not in NEEDS_SCIPY])
def test_karras_names_have_karras_sigmas(name: str, sd1_config: dict) -> None:
    sched = make_scheduler(name, sd1_config)
    assert sched.config.use_karras_sigmas is True
    sched.set_timesteps(10)
    plain = make_scheduler(name.removesuffix(" Karras"), sd1_config)
    assert plain.config.use_karras_sigmas is False
    plain.set_timesteps(10)
    assert not torch.allclose(torch.as_tensor(sched.sigmas), torch.as_tensor(plain.sigmas))


def test_specific_mappings(sd1_config: dict) -> None:
    s = make_scheduler("DPM++ 2M SDE Karras", sd1_config)
    assert type(s).__name__ == "DPMSolverMultistepScheduler"
    assert s.config.algorithm_type == "sde-dpmsolver++" and s.config.use_karras_sigmas
    assert type(make_scheduler("Euler a", sd1_config)).__name__ == "EulerAncestralDiscreteScheduler"
    heun = make_scheduler("DPM++ 2M SDE Heun", sd1_config, "Automatic")
    assert heun.config.solver_type == "heun" and heun.config.use_exponential_sigmas
    three = make_scheduler("DPM++ 3M SDE Karras", sd1_config)
    assert three.config.solver_order == 3 and three.config.use_karras_sigmas
    assert type(make_scheduler("LCM", sd1_config)).__name__ == "LCMScheduler"
    plms = make_scheduler("PLMS", sd1_config)
    assert type(plms).__name__ == "PNDMScheduler" and plms.config.skip_prk_steps


def test_schedule_type_a1111_19(sd1_config: dict) -> None:
    # A1111 ≥1.9: sampler + "Schedule type"; Automatic = the sampler's own default.
    assert resolve_sampler("DPM++ 2M", "Automatic")[1] == "Karras"
    assert resolve_sampler("DPM++ 2M SDE", "Automatic")[1] == "Exponential"
    assert resolve_sampler("Euler a", "Automatic")[1] == "Uniform"
    assert resolve_sampler("DPM++ 2M", None)[1] == "Uniform"  # pre-1.9 name alone
    assert resolve_sampler("dpm++ 2m karras")[0].name == "DPM++ 2M"  # case-insensitive split
    s = make_scheduler("Euler", sd1_config, schedule_type="exponential")
    assert s.config.use_exponential_sigmas and not s.config.use_karras_sigmas
    s = make_scheduler("DPM++ 2M", sd1_config, schedule_type="SGM Uniform")
    assert s.config.timestep_spacing == "trailing"
    # DDIM ignores the schedule type, as in A1111 (a timesteps sampler).
    assert make_scheduler("DDIM", sd1_config, "Karras").config.timestep_spacing == "leading"
    assert "Karras" in schedule_type_names()


def test_unsupported_combinations(sd1_config: dict) -> None:
    with pytest.raises(ConfigError, match="EulerAncestralDiscreteScheduler"):
        make_scheduler("Euler a", sd1_config, "Exponential")  # neither diffusers nor lorakiln has it
    with pytest.raises(ConfigError, match="no diffusers equivalent"):
        make_scheduler("DPM fast", sd1_config)
    with pytest.raises(ConfigError, match="no diffusers equivalent"):
        make_scheduler("Restart", sd1_config)
    with pytest.raises(ConfigError, match="no diffusers equivalent"):
        make_scheduler("Euler", sd1_config, "Align Your Steps")
    with pytest.raises(ConfigError, match="drop one"):
        make_scheduler("DPM++ 2M Karras", sd1_config, "Exponential")


def test_unknown_name_lists_valid_and_nearest(sd1_config: dict) -> None:
    with pytest.raises(ConfigError) as err:
        make_scheduler("DPM++ 2M Karas", sd1_config)
    msg = str(err.value)
    assert "Did you mean 'DPM++ 2M Karras'?" in msg
    assert all(n in msg for n in sampler_names())
    with pytest.raises(ConfigError, match="unknown schedule type 'Karas'.*'Karras'"):
        make_scheduler("Euler", sd1_config, "Karas")


@pytest.mark.parametrize("kohya", sorted(KOHYA_SAMPLERS))
def test_sd_scripts_sampler_names_map(kohya: str, sd1_config: dict) -> None:
    # sd-scripts `get_my_scheduler` builds these classes with their default (uniform) sigmas.
    expected = {"ddim": "DDIMScheduler", "pndm": "PNDMScheduler", "lms": "LMSDiscreteScheduler",
                "euler": "EulerDiscreteScheduler", "euler_a": "EulerAncestralDiscreteScheduler",
                "heun": "HeunDiscreteScheduler", "dpm_2": "KDPM2DiscreteScheduler",
                "dpm_2_a": "KDPM2AncestralDiscreteScheduler", "dpmsolver++": "DPMSolverMultistepScheduler",
                "dpmsingle": "DPMSolverSinglestepScheduler"}[kohya.removeprefix("k_")]
    if KOHYA_SAMPLERS[kohya] in NEEDS_SCIPY and not HAS_SCIPY:
        return
    sched = make_scheduler(kohya, sd1_config)
    assert type(sched).__name__ == expected and not sched.config.get("use_karras_sigmas", False)


def test_euler_a_with_karras_runs_the_ancestral_step_on_diffusers_karras_sigmas(sd1_config: dict) -> None:
    """A1111 ≥ 1.9 draws "Euler a" + "Schedule type: Karras"; the sigmas and timesteps are exactly
    those of diffusers' own Karras discretisation, the step stays the ancestral one."""
    from diffusers import EulerAncestralDiscreteScheduler, EulerDiscreteScheduler

    sched = make_scheduler("Euler a", sd1_config, "Karras")
    assert isinstance(sched, EulerAncestralDiscreteScheduler)
    karras = make_scheduler("Euler", sd1_config, "Karras")
    assert isinstance(karras, EulerDiscreteScheduler) and karras.config.use_karras_sigmas
    sched.set_timesteps(12)
    karras.set_timesteps(12)
    assert torch.equal(sched.sigmas, karras.sigmas) and torch.equal(sched.timesteps, karras.timesteps)
    plain = make_scheduler("Euler a", sd1_config)
    plain.set_timesteps(12)
    assert not torch.equal(plain.sigmas, sched.sigmas)  # Karras really changes the schedule
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0)) * sched.init_noise_sigma
    for t in sched.timesteps:  # a whole denoising run with a stand-in model: finite, and ends near zero noise
        model_in = sched.scale_model_input(latents, t)
        latents = sched.step(0.1 * model_in, t, latents, generator=torch.Generator().manual_seed(1)).prev_sample
    assert torch.isfinite(latents).all()
