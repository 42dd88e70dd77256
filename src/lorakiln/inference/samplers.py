"""A1111 sampler names → diffusers schedulers.

Users copy settings from A1111 ("Sampler: DPM++ 2M Karras"), so lorakiln accepts A1111's names and
builds the diffusers scheduler that diffusers itself documents as the equivalent (table "A1111 /
k-diffusion ↔ 🤗 Diffusers" in diffusers' `api/schedulers/overview`, plus its "Noise schedules and
schedule types" table: Karras → `use_karras_sigmas`, SGM Uniform/Simple → `timestep_spacing=
"trailing"`). The model's own betas and prediction type come from `base_config` (the bundle's
noise scheduler config), only the algorithm changes.

A1111 ≥1.9 split the schedule out of the name: "DPM++ 2M Karras" became sampler "DPM++ 2M" +
"Schedule type: Karras", with "Automatic" meaning the sampler's default schedule
(`modules/sd_samplers_kdiffusion.py` `{"scheduler": "karras"}` options). Both spellings work here;
a trailing schedule label is split off the name the way A1111's `get_sampler_and_scheduler` does.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from lorakiln.errors import ConfigError


@dataclass(frozen=True)
class SamplerSpec:
    """One A1111 sampler: its diffusers class, fixed config overrides and A1111 schedule default.

    `automatic` is the schedule A1111 ≥1.9 uses for "Automatic". `timestep_based` samplers (DDIM,
    PLMS, UniPC live in A1111's `sd_samplers_timesteps`) ignore the schedule type in A1111, so they
    do here too. `exact` is False where diffusers has no true equivalent and `note` says what
    differs.
    """

    name: str
    scheduler_class: str
    overrides: Mapping[str, Any] = field(default_factory=dict)
    automatic: str = "Uniform"
    timestep_based: bool = False
    exact: bool = True
    note: str = ""


_DPMPP = {"algorithm_type": "dpmsolver++", "solver_order": 2}
# The single-step solver defaults to lower_order_final=False, which diffusers then overrides with a
# warning at every build because the final sigma is zero; ask for the setting it ends up using.
_DPMPP_SINGLE = {**_DPMPP, "lower_order_final": True}

# Base samplers, A1111 ≥1.9 names. Automatic schedules from A1111's samplers_k_diffusion options.
_SPECS: tuple[SamplerSpec, ...] = (
    SamplerSpec("Euler a", "EulerAncestralDiscreteScheduler"),
    SamplerSpec("Euler", "EulerDiscreteScheduler"),
    SamplerSpec("LMS", "LMSDiscreteScheduler"),
    SamplerSpec("Heun", "HeunDiscreteScheduler"),
    SamplerSpec("DPM2", "KDPM2DiscreteScheduler", automatic="Karras",
                note="A1111 also drops the next-to-last sigma; diffusers does not"),
    SamplerSpec("DPM2 a", "KDPM2AncestralDiscreteScheduler", automatic="Karras",
                note="A1111 also drops the next-to-last sigma; diffusers does not"),
    SamplerSpec("DPM++ 2M", "DPMSolverMultistepScheduler", _DPMPP, automatic="Karras"),
    SamplerSpec("DPM++ 2M SDE", "DPMSolverMultistepScheduler",
                {"algorithm_type": "sde-dpmsolver++", "solver_order": 2}, automatic="Exponential"),
    # k-diffusion's `sample_dpmpp_2m_sde(solver_type="heun")`; diffusers exposes the same solver_type.
    SamplerSpec("DPM++ 2M SDE Heun", "DPMSolverMultistepScheduler",
                {"algorithm_type": "sde-dpmsolver++", "solver_order": 2, "solver_type": "heun"},
                automatic="Exponential"),
    SamplerSpec("DPM++ 3M SDE", "DPMSolverMultistepScheduler",
                {"algorithm_type": "sde-dpmsolver++", "solver_order": 3}, automatic="Exponential"),
    # diffusers' table maps "DPM++ SDE" to the single-step solver (its DPMSolverSDEScheduler is
    # closer but needs torchsde, which lorakiln does not depend on).
    SamplerSpec("DPM++ SDE", "DPMSolverSinglestepScheduler", _DPMPP_SINGLE, automatic="Karras", exact=False,
                note="deterministic single-step DPM-Solver++, not k-diffusion's stochastic sampler"),
    # diffusers' table: "N/A — very similar to DPMSolverSinglestepScheduler".
    SamplerSpec("DPM++ 2S a", "DPMSolverSinglestepScheduler", _DPMPP_SINGLE, automatic="Karras", exact=False,
                note="no ancestral noise: diffusers has no DPM++ 2S a"),
    SamplerSpec("DDIM", "DDIMScheduler", timestep_based=True),
    # PLMS is PNDM without its Runge-Kutta warm-up (diffusers' SD default scheduler setting).
    SamplerSpec("PLMS", "PNDMScheduler", {"skip_prk_steps": True}, timestep_based=True),
    SamplerSpec("UniPC", "UniPCMultistepScheduler", timestep_based=True),
    # A1111 ≥1.8 lists LCM among its k-diffusion samplers; meant for LCM-distilled models/LoRAs.
    SamplerSpec("LCM", "LCMScheduler", timestep_based=True),
)
_BY_NAME = {s.name.lower(): s for s in _SPECS}

#: A1111 samplers diffusers cannot run at all (diffusers' table: "N/A").
UNSUPPORTED = {
    "dpm fast": "DPM fast",
    "dpm adaptive": "DPM adaptive",
    "restart": "Restart",
    "ddim cfg++": "DDIM CFG++",
}

#: A1111 schedule types (`modules/sd_schedulers.py` labels) → diffusers config overrides.
SCHEDULE_TYPES: dict[str, dict[str, Any]] = {
    # k-diffusion's default discretisation spaces timesteps evenly from the last to the first.
    "Uniform": {"timestep_spacing": "linspace"},
    "Karras": {"use_karras_sigmas": True},
    "Exponential": {"use_exponential_sigmas": True},
    "Beta": {"use_beta_sigmas": True},
    "SGM Uniform": {"timestep_spacing": "trailing"},
    "Simple": {"timestep_spacing": "trailing"},
}
_UNSUPPORTED_SCHEDULES = ("Polyexponential", "KL Optimal", "Align Your Steps", "Normal", "DDIM")
_SIGMA_KEYS = ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas")
# Overrides that may be dropped when a class lacks the option: DPMSolverSinglestepScheduler has no
# `timestep_spacing` because it always spaces timesteps evenly (= Uniform already).
_SOFT = {("timestep_spacing", "linspace")}

# Pre-1.9 combined names A1111 wrote into infotexts (its `samplers_k_diffusion` before the split).
_LEGACY_NAMES = (
    "LMS Karras", "DPM2 Karras", "DPM2 a Karras", "DPM++ 2S a Karras", "DPM++ 2M Karras",
    "DPM++ SDE Karras", "DPM++ 2M SDE Karras", "DPM++ 2M SDE Exponential",
    "DPM++ 2M SDE Heun Karras", "DPM++ 2M SDE Heun Exponential", "DPM++ 3M SDE Karras",
    "DPM++ 3M SDE Exponential",
)


# sd-scripts' `--sample_sampler` / sample-file `--ss` names (`train_util.get_my_scheduler`) → A1111
# names. sd-scripts builds the plain diffusers class, so these run with the Uniform schedule.
KOHYA_SAMPLERS: dict[str, str] = {
    "ddim": "DDIM", "pndm": "PLMS", "lms": "LMS", "k_lms": "LMS", "euler": "Euler", "k_euler": "Euler",
    "euler_a": "Euler a", "k_euler_a": "Euler a", "heun": "Heun", "dpm_2": "DPM2", "k_dpm_2": "DPM2",
    "dpm_2_a": "DPM2 a", "k_dpm_2_a": "DPM2 a", "dpmsolver++": "DPM++ 2M", "dpmsingle": "DPM++ 2S a",
}


def sampler_names() -> list[str]:
    """Every sampler name `make_scheduler` accepts (A1111 ≥1.9 names, then pre-1.9 combined names)."""
    return [s.name for s in _SPECS] + list(_LEGACY_NAMES)


def schedule_type_names() -> list[str]:
    """Schedule types `make_scheduler` accepts ("Automatic" = the sampler's A1111 default)."""
    return ["Automatic", *SCHEDULE_TYPES]


def _unknown(kind: str, name: str, valid: list[str]) -> ConfigError:
    lowered = {v.lower(): v for v in valid}
    near = difflib.get_close_matches(name.lower(), list(lowered), n=1, cutoff=0.5)
    hint = f" Did you mean {lowered[near[0]]!r}?" if near else ""
    return ConfigError(f"unknown {kind} {name!r}.{hint} Valid: {', '.join(valid)}.")


def resolve_sampler(name: str, schedule_type: str | None = None) -> tuple[SamplerSpec, str]:
    """(spec, concrete schedule label) for an A1111 sampler name and optional schedule type.

    `schedule_type` None means "not given" (a pre-1.9 infotext): the name alone decides, so
    "DPM++ 2M" is uniform and "DPM++ 2M Karras" is Karras, exactly as old A1111 ran them.
    "Automatic" means the sampler's A1111 ≥1.9 default. Matching is case-insensitive.
    """
    key = " ".join(name.split()).lower()
    key = KOHYA_SAMPLERS.get(key, key).lower()
    if key in ("ddpm", "dpmsolver"):
        raise ConfigError(f"sd-scripts sampler {name!r} has no A1111 counterpart in lorakiln; use 'DDIM' "
                          f"or 'DPM++ 2M' ('dpmsolver++').")
    if key in UNSUPPORTED:
        raise ConfigError(f"sampler {UNSUPPORTED[key]!r} has no diffusers equivalent (diffusers lists it "
                          f"as N/A); pick another, e.g. 'DPM++ 2M' or 'Euler a'.")
    suffix: str | None = None
    spec = _BY_NAME.get(key)
    if spec is None:  # "DPM++ 2M Karras" → "DPM++ 2M" + Karras (A1111 get_sampler_and_scheduler)
        for label in SCHEDULE_TYPES:
            if key.endswith(" " + label.lower()) and key[: -len(label) - 1] in _BY_NAME:
                spec, suffix = _BY_NAME[key[: -len(label) - 1]], label
                break
    if spec is None:
        raise _unknown("sampler", name, sampler_names() + sorted(KOHYA_SAMPLERS))

    wanted = _schedule_label(schedule_type) if schedule_type is not None else None
    if suffix and wanted not in (None, "Automatic", suffix):
        raise ConfigError(f"sampler {name!r} already names schedule {suffix!r}, "
                          f"but schedule type {schedule_type!r} was also given; drop one.")
    label = suffix or wanted or "Uniform"
    if label == "Automatic":
        label = spec.automatic
    return spec, label


def _schedule_label(schedule_type: str) -> str:
    lowered = " ".join(schedule_type.split()).lower()
    for label in schedule_type_names():
        if label.lower() == lowered:
            return label
    for label in _UNSUPPORTED_SCHEDULES:
        if label.lower() == lowered:
            raise ConfigError(f"schedule type {label!r} has no diffusers equivalent; "
                              f"use one of: {', '.join(schedule_type_names())}.")
    raise _unknown("schedule type", schedule_type, schedule_type_names())


def scheduler_overrides(name: str, schedule_type: str | None = None) -> tuple[str, dict[str, Any]]:
    """(diffusers class name, config overrides) for an A1111 sampler + schedule type."""
    spec, label = resolve_sampler(name, schedule_type)
    overrides = dict(spec.overrides)
    # Clear sigma flags a base config may carry so the chosen schedule is the only one active.
    overrides.update(dict.fromkeys(_SIGMA_KEYS, False))
    if not spec.timestep_based:  # A1111 ignores the schedule type for DDIM/PLMS/UniPC
        overrides.update(SCHEDULE_TYPES[label])
    return spec.scheduler_class, overrides


def make_scheduler(name: str, base_config: Mapping[str, Any], schedule_type: str | None = None) -> Any:
    """A diffusers scheduler for an A1111 sampler name, keeping the model's betas/prediction type.

    `base_config` is a scheduler config (e.g. `bundle.noise_scheduler.config`). Raises
    `ConfigError` for unknown names, A1111 samplers or schedules diffusers lacks, a schedule the
    chosen diffusers class cannot do (e.g. "Euler a" + Exponential), or a missing optional dependency.
    """
    import inspect

    import diffusers

    class_name, overrides = scheduler_overrides(name, schedule_type)
    cls = getattr(diffusers, class_name)
    if class_name == "EulerAncestralDiscreteScheduler" and overrides.pop("use_karras_sigmas", False):
        from lorakiln.inference.karras_ancestral import EulerAncestralKarrasScheduler

        cls = EulerAncestralKarrasScheduler  # A1111 ≥ 1.9 draws "Euler a" + Karras; diffusers lacks the flag
    accepted = set(inspect.signature(cls.__init__).parameters)
    if "kwargs" not in accepted:  # a real class (diffusers' stand-ins for missing deps take **kwargs)
        for key, value in list(overrides.items()):
            if key not in accepted:
                if value and (key, value) not in _SOFT:  # a requested feature the class lacks
                    raise ConfigError(f"sampler {name!r} with schedule {schedule_type!r}: diffusers' "
                                      f"{class_name} does not support {key}={value!r}.")
                del overrides[key]  # a "switch it off" flag the class does not have
    try:
        return cls.from_config(dict(base_config), **overrides)
    except ImportError as exc:  # diffusers' dummy objects (LMS → scipy, beta sigmas → scipy)
        raise ConfigError(f"sampler {name!r} needs an extra package: {str(exc).strip()}") from None
