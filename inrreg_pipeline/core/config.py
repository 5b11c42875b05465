"""Registration settings and the JSON presets that name them.

A preset is a JSON object with the sections below; any key left out keeps its default. Presets
ship in ``inrreg_pipeline/core/presets/*.json`` and are selected by name (``default``, ``fast``,
...) or by the path of a JSON file of the same shape.

A preset may name another as its ``"base"`` (a shipped name, or a JSON path relative to the
preset's own folder): the base is loaded first and the preset's keys replace its keys, section by
section, so ``{"base": "default", "method": "ensemble"}`` is the ``default`` preset with the
ensemble and nothing else changed. A base may have a base of its own; a loop is an error.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Callable

from .choices import (AFFINE_SIMILARITIES, ACTIVATIONS, BACKENDS, LR_SCHEDULES, METHODS, MOTIONS, OMEGA_MODES, OPTIMIZERS, PERIODIC,
                      REGULARISERS, SIMILARITIES, SVF_NETWORKS, SVF_SIMILARITIES, SVF_REGULARISERS, VARIANT_METHODS)

PRESET_DIR = Path(__file__).parent / "presets"


@dataclass
class AffineSettings:
    """Affine stage run before the INR: centre-of-mass initialisation, then gradient descent.

    ``shrink_factors`` / ``iterations`` are per resolution level (coarse to fine); ``samples`` is
    the number of fixed-image voxels drawn per iteration; ``lr`` is Adam's step on the
    (dimensionless) matrix parameters, translations being scaled by the image size.
    The samples are drawn from the fixed foreground (voxels above 5 % of its maximum, per level)
    dilated by ``sample_dilation_mm`` (Euclidean, mm; 0: the foreground alone; never beyond a
    user's fixed mask, which says where to compare), so that the
    background just outside the fixed outline is compared too and a moving image that overlaps it
    is penalised (without it, only the fixed foreground is compared and the moving outline is free
    to spill over the fixed one).
    ``level_spacing_mm``, when set, replaces ``shrink_factors`` by voxel sizes in mm: each image is
    shrunk by the integer factor that brings its finest voxel axis closest to each size
    (:func:`~.space.shrink_factor`), so the levels mean the same anatomy at any input resolution
    (``[8, 4, 2]`` is ``shrink_factors [4, 2, 1]`` on 2 mm images and ``[8, 4, 2]`` on 1 mm ones).
    """

    enabled: bool = True
    similarity: str = "ncc"
    shrink_factors: list[int] = field(default_factory=lambda: [4, 2, 1])
    iterations: list[int] = field(default_factory=lambda: [150, 100, 50])
    samples: int = 20000
    lr: float = 0.01
    rigid_iterations: int = 100
    sample_dilation_mm: float = 0.0
    level_spacing_mm: list[float] | None = None


@dataclass
class NetworkSettings:
    """Deformation MLP (see :class:`inrreg_pipeline.core.networks.DeformationINR`)."""

    hidden_layers: int = 5
    hidden_features: int = 256
    activation: str = "sine"
    omega: float = 30.0
    fourier_frequencies: int = 0
    skip_connection: bool = True


@dataclass
class OptimisationSettings:
    """INR optimisation: ``iterations`` steps, each on ``patches`` random patches of ``patch_size^d``
    fixed-grid points (at the fixed image's own voxel spacing) centred in the mask.

    The regulariser is evaluated at ``regulariser_points`` random points of the mask, jittered
    uniformly within a voxel (0: at every patch point). Its autograd Jacobian costs several
    times a forward pass, so a random subset keeps CPU runs affordable with the same expectation.

    ``smoothing_mm`` makes the similarity coarse to fine: the iterations are split evenly over its
    levels and at each level both images are Gaussian-smoothed with that sigma in mm (0: none),
    as ANTs' ``--smoothing-sigmas ...mm``. ``lr_schedule`` is ``constant`` or ``cosine`` (decay to
    ``lr * lr_final_fraction`` over all iterations).

    ``image_spacing_mm``: both images are shrunk (Gaussian-smoothed, every ``k``-th voxel, as
    ANTs' shrink factors) by the integer factor that brings each one's finest voxel axis closest to
    that size before the optimisation (0: as given), so the patches and the LNCC window, counted in
    voxels, cover the same anatomy at any input resolution (a 16-voxel patch is 32 mm on 2 mm and
    on 1 mm images at 2.0). The network is continuous: the dense outputs are still evaluated on the
    fixed image's own grid.
    """

    iterations: int = 2000
    patches: int = 4
    patch_size: int = 16
    optimizer: str = "adamw"
    lr: float = 1e-4
    weight_decay: float = 0.0
    regulariser_points: int = 0
    smoothing_mm: list[float] = field(default_factory=lambda: [0.0])
    lr_schedule: str = "constant"
    lr_final_fraction: float = 0.1
    image_spacing_mm: float = 0.0


@dataclass
class LossSettings:
    """``L = L_sim + alpha * L_reg`` (methods.md section 1)."""

    similarity: str = "ncc+lncc"
    lncc_window: int = 9
    regulariser: str = "jacobian"
    alpha: float = 0.1


@dataclass
class HashSettings:
    """Multi-resolution hash encoding of a two-network coordinate network (see
    :mod:`inrreg_pipeline.core.hash_encoding`): ``levels`` L, ``features_per_level`` F, table size
    ``T = 2**log2_table_size``, base resolution ``base_resolution`` N_min (vertices per axis of the
    coarsest level over the encoding domain) and growth factor ``growth_factor`` b."""

    levels: int = 10
    features_per_level: int = 2
    log2_table_size: int = 15
    base_resolution: int = 4
    growth_factor: float = 1.5


@dataclass
class MotionHashSettings(HashSettings):
    """Hash encoding of the motion network. With ``motion: "rigid"`` only its coarsest level is
    used (finest level = coarsest level); ``"deformable"`` uses all ``levels``."""

    levels: int = 4
    features_per_level: int = 2
    log2_table_size: int = 12
    base_resolution: int = 3
    growth_factor: float = 1.5


@dataclass
class TwoNetworkSettings:
    """Untrained two-network registration (methods.md section 2; :mod:`inrreg_pipeline.core.two_network`).

    * ``motion``: ``rigid`` (motion network on the coarsest level of ``motion_hash`` only),
      ``deformable`` (all its levels) or ``affine-param`` (an explicit affine instead of a motion
      network; rotation + translation only when ``affine_param_rigid``).
    * Image network ``g``: ``hidden_layers`` x ``hidden_features`` ReLU MLP on its ``image_hash``
      encoding, plus the normalised coordinate when ``include_input``; ``multimodal``: one output
      channel per image (else one shared channel).
    * Motion network ``m``: ``motion_hidden_layers`` x ``motion_hidden_features`` ReLU MLP on its
      ``motion_hash`` encoding (plus the normalised coordinate when ``motion_include_input``), plus a
      linear term of the normalised coordinate when ``motion_linear``; output zero at start.
    * Optimisation: ``iterations`` Adam steps, each on ``points`` random voxels of each image;
      learning rate ``lr`` for the image network, ``motion_lr`` for the motion model (ramped up
      linearly over the first ``motion_warmup`` fraction of the iterations).
    * ``coarse_to_fine``: hash level ``l`` of both networks weighted by
      ``w_l = (1 - cos(pi clamp(alpha L - l, 0, 1))) / 2``, ``alpha = iteration / (coarse_to_fine_target
      * iterations)``; all levels fully on from then.
    * ``backend``: hash encoding backend (``auto``, ``torch`` or ``tcnn``); ``domain_margin``: the
      encoding domain is the fixed image's normalised box enlarged by this fraction on each side.
    * ``centre_of_mass_init``: the motion starts as the translation between the centres of mass of
      the two foreground masks (not of the intensities, so it does not depend on the contrast)
      instead of zero.
    * ``shared_latent`` (multi-modal only): 0 -- ``g``'s channels are linear outputs of its last
      hidden layer; ``k > 0`` -- ``g`` outputs ``k`` latent values shared by the channels and each
      channel is a small MLP (``latent_head_features`` hidden units) of the latent alone.
    """

    motion: str = "deformable"
    motion_hash: MotionHashSettings = field(default_factory=MotionHashSettings)
    image_hash: HashSettings = field(default_factory=HashSettings)
    hidden_features: int = 64
    hidden_layers: int = 2
    include_input: bool = True
    motion_hidden_features: int = 32
    motion_hidden_layers: int = 1
    motion_include_input: bool = True
    motion_linear: bool = True
    iterations: int = 300
    points: int = 1024
    lr: float = 0.01
    motion_lr: float = 0.003
    motion_warmup: float = 0.0
    coarse_to_fine: bool = True
    coarse_to_fine_target: float = 1.0
    multimodal: bool = False
    affine_param_rigid: bool = False
    backend: str = "auto"
    domain_margin: float = 0.25
    centre_of_mass_init: bool = False
    shared_latent: int = 0
    latent_head_features: int = 16


@dataclass
class VariantSettings:
    """Options of the deformation-INR variants (methods.md section 1; :mod:`.variants`).

    * ``omega_mode``: ``fixed``, ``trainable`` (per-layer omega, init ``network.omega``),
      ``width`` (omega linear across each layer's units, ``omega -+ omega_delta``: 10..50) or
      ``attention`` (``omega + omega_delta * tanh(a mean|z| + b)``, learned ``a``, ``b``); works
      with every ``method`` of the single-network family. ``omega_lr``: Adam step of those
      parameters (omega is O(30), the network's ``lr`` would leave it where it started).
    * ``ensemble_omegas``: one SIREN per value, fields averaged, trained jointly.
    * ``cascade_alphas``: one stage per value, the regulariser weight of that stage (replaces
      ``loss.alpha``); ``cascade_iterations``: iterations per stage (empty: ``optimisation.iterations``
      each).
    * ``cycle_alpha``: weight of the cycle loss, whose residuals are measured in units of the
      network box's half-extent ``s`` (mm), i.e. ``cycle_alpha / s^2`` per mm^2 (about 0.01 mm^-2
      for an adult brain, ``s`` ~ 100 mm): the reference study's 100 on its normalised coordinates.
    * ``fusion_sigma_mm``: width of the Gaussian (and of the Laplacian-of-Gaussian) filters of the
      moving image that the fusion network mixes with it, in mm.
    """

    omega_mode: str = "fixed"
    omega_delta: float = 20.0
    omega_lr: float = 0.01
    ensemble_omegas: list[float] = field(default_factory=lambda: [10.0, 30.0, 50.0])
    cascade_alphas: list[float] = field(default_factory=lambda: [0.1, 1.0])
    cascade_iterations: list[int] = field(default_factory=list)
    cycle_alpha: float = 100.0
    fusion_sigma_mm: float = 2.0


@dataclass
class VelocityHashSettings:
    """The ``svf`` method's ``hash-grid`` velocity network (:mod:`inrreg_pipeline.core.hash_grid_inr`):
    a ``hidden_layers`` x ``hidden_features`` ReLU MLP of a hash encoding of ``levels`` levels with
    ``features_per_level`` features and at most ``2**log2_table_size`` entries each, whose coarsest
    level has ``base_resolution`` vertices across the fixed image's world box (its longest side) and
    whose finest cells are about ``finest_mm`` (mm; the growth factor follows from both), so its
    sizes mean the same anatomy at any voxel size. ``backend``: ``auto`` (tiny-cuda-nn on CUDA when
    importable, else PyTorch), ``torch`` or ``tcnn``; both compute the same function.
    ``coarse_to_fine_steps``: the levels fade in, coarsest first, over that many steps counted from
    the first step of the first level (:func:`~inrreg_pipeline.core.hash_encoding.coarse_to_fine_weights`
    from ``alpha = 1 / levels``, the coarsest level alone, to 1), so the velocity is smooth while the
    large-scale alignment is found and its finer cells join later; 0: every level from the start.
    ``hidden_bias``: whether the hidden layers have biases. With them, the hash features start near 0
    (tables ``U(-1e-4, 1e-4)``), so each unit's sign is its bias's, the same at every point, and Adam
    at the tables' step size moves a bias by about ``lr`` per step: units die for good, and on some
    seeds all of them do and the velocity stops at the identity. Without them (as tiny-cuda-nn's
    fully fused MLPs) a unit's sign follows the features, which vary in sign from point to point.
    The default (true) keeps presets written before session 18 as they were; the shipped ``svf`` sets
    it false."""

    levels: int = 8
    features_per_level: int = 2
    log2_table_size: int = 18
    base_resolution: int = 4
    finest_mm: float = 4.0
    hidden_features: int = 64
    hidden_layers: int = 1
    backend: str = "auto"
    coarse_to_fine_steps: int = 0
    hidden_bias: bool = True


@dataclass
class SVFSettings:
    """The diffeomorphic velocity INR (``method: "svf"``; :mod:`inrreg_pipeline.core.svf`).

    The network (``network`` section) gives a stationary velocity ``v`` (mm) at any world point. Each
    step evaluates it on a control grid of about ``control_spacing_mm`` over the fixed mask's bounding
    box enlarged by ``margin_mm`` (``v`` tapers to 0 over the margin, so the map is the identity
    outside), integrates ``phi = exp(v)`` by ``squaring_steps`` scalings and squarings, and compares
    the whole cropped fixed image with the moving image at ``A(phi(x))`` by ``loss.similarity``
    (LNCC window ``lncc_window_mm`` in mm, converted to odd voxel counts per level) plus
    ``loss.alpha`` times the regulariser on the control grid: ``loss.regulariser`` ``diffusion``,
    ``mean |grad v|^2`` (mm/mm) of the velocity, or ``jacobian``, ``mean (log det J)^2`` of
    ``exp(v)`` (the spread of volume change, what SD log J reports); ``diffusion_alpha`` adds
    that weight of the velocity's diffusion to either.

    Coarse to fine: one level per ``shrink_factors`` entry (the fixed grid subsampled by that factor
    after Gaussian smoothing, as ANTs' shrink factors) with ``iterations`` Adam steps each at ``lr``
    (cosine decay to ``lr * lr_final_fraction`` within each level). ``level_spacing_mm``, when set,
    replaces ``shrink_factors`` by voxel sizes in mm: each image is shrunk by the integer factor that
    brings its finest voxel axis closest to that size (at least 1), so a preset means the same
    anatomy, and costs the same, on a 1 mm image as on a 2 mm one (``[4, 2]`` on 2 mm images is
    ``shrink_factors [2, 1]``; on 1 mm images ``[4, 2]``). The dense outputs are still written on
    the fixed image's own grid. ``symmetric``: both images are
    deformed to the midpoint, ``F(exp(-v/2))`` against ``M(A exp(v/2))``, as SyN does.
    ``velocity_smoothing_mm``: Gaussian sigma (mm) applied to the velocity on the control grid before
    integration (SyN's flow smoothing; 0: none). ``similarity_dilation_mm``: the similarity compares
    the fixed foreground dilated by that distance (Euclidean, mm; at most ``margin_mm``; a user's
    fixed mask is used as given), so the foreground's edge
    (a skull-stripped brain's outline against the background) lies inside the compared region and
    drives the alignment of the outer cortex, as it does for ANTs and greedy, which compare the whole
    image (0: the mask alone, whose LNCC windows at the edge are half outside it and not counted).
    ``level_control_spacing_mm``: one control-grid spacing (mm) per level instead of
    ``control_spacing_mm`` at all (the network is continuous, so a finer level can evaluate it on a
    finer grid; the last level's grid is the transform's). A 2 mm grid at the last level costs about
    5x the time on a CPU (``benchmarks/results/oasis-trt-20_validation_2mm_cpu.md``, session 9).
    ``level_lncc_window_mm``: one LNCC window (mm) per level instead of ``lncc_window_mm`` at all (a
    wider window at a coarse level, as SyN's fixed voxel radius gives, compares more context there).
    ``folding_alpha``: weight of ``mean relu(folding_floor - det J)^2`` of ``exp(v)`` at the corners of
    every control-grid cell (the Jacobians of the interpolated map that the written field has; 0: off).
    ``mind_alpha``: weight of a structural similarity added to ``loss.similarity``: the mean squared
    difference of the MIND-SSC descriptors (:func:`~.losses.mind_ssc`) of the fixed and the warped
    image over the compared region, computed on each level's grid with neighbours
    ``mind_distance_mm`` apart (rounded to whole voxels of the level, at least 1; 0: off).
    ``level_mind_alpha``: one such weight per level instead of ``mind_alpha`` at all (the
    descriptors have 12 channels in 3-D, so at a 2 mm level on a CPU the term costs several times
    the rest of a step; at the coarser levels it is cheap).
    ``level_frozen_hash_levels``: one count per level (``network: hash-grid`` only): during that
    level the coarsest that many hash levels keep the table entries the earlier levels gave them
    (their gradient is masked and their Adam momentum cleared), so a fine image level refines
    the detail of the velocity without moving the large-scale alignment the coarse levels found
    (0: every hash level learns; null: 0 at every level).
    ``network``: what gives ``v``: ``siren``, the MLP of the ``network`` section, or ``hash-grid``,
    the multi-resolution hash-grid MLP of ``hash`` (:class:`VelocityHashSettings`).
    """

    control_spacing_mm: float = 4.0
    margin_mm: float = 12.0
    squaring_steps: int = 7
    shrink_factors: list[int] = field(default_factory=lambda: [2, 1])
    level_spacing_mm: list[float] | None = None
    iterations: list[int] = field(default_factory=lambda: [150, 150])
    lr: float = 1e-3
    lr_final_fraction: float = 0.1
    lncc_window_mm: float = 10.0
    symmetric: bool = False
    velocity_smoothing_mm: float = 0.0
    diffusion_alpha: float = 0.0
    similarity_dilation_mm: float = 0.0
    level_control_spacing_mm: list[float] | None = None
    level_lncc_window_mm: list[float] | None = None
    folding_alpha: float = 0.0
    folding_floor: float = 0.1
    mind_alpha: float = 0.0
    level_mind_alpha: list[float] | None = None
    level_frozen_hash_levels: list[float] | None = None  # whole numbers (JSON numbers parse as floats)
    mind_distance_mm: float = 4.0
    network: str = "siren"
    hash: VelocityHashSettings = field(default_factory=VelocityHashSettings)


@dataclass
class RegistrationSettings:
    name: str = "custom"
    description: str = ""
    affine: AffineSettings = field(default_factory=AffineSettings)
    network: NetworkSettings = field(default_factory=NetworkSettings)
    optimisation: OptimisationSettings = field(default_factory=OptimisationSettings)
    loss: LossSettings = field(default_factory=LossSettings)
    inverse_iterations: int = 20
    method: str = "siren"
    two_network: TwoNetworkSettings = field(default_factory=TwoNetworkSettings)
    variants: VariantSettings = field(default_factory=VariantSettings)
    svf: SVFSettings = field(default_factory=SVFSettings)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _fill(cls: type, values: dict[str, Any], where: str) -> Any:
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ValueError(f"unknown preset key(s) {', '.join(unknown)} in '{where}'")
    kwargs = {}
    for key, value in values.items():
        default = getattr(cls(), key)
        if is_dataclass(default):
            if not isinstance(value, dict):
                raise ValueError(f"preset key '{where}.{key}' must be an object")
            kwargs[key] = _fill(type(default), value, f"{where}.{key}")
        else:
            kwargs[key] = _check_type(value, default, f"{where}.{key}")
    return cls(**kwargs)


def _one_per_level(values: list[float] | None, iterations: list[int]) -> bool:
    """A per-level list setting is valid: ``None`` (the scalar setting at every level), or one finite
    value > 0 per entry of ``iterations``."""
    return values is None or (len(values) == len(iterations) and all(math.isfinite(m) and m > 0 for m in values))


def _check_type(value: Any, default: Any, where: str) -> Any:
    """``value`` converted to the type of ``default`` (int -> float allowed), else ``ValueError``."""
    def bad() -> ValueError:
        return ValueError(f"preset key '{where}' must be {type(default).__name__}, got {value!r}")

    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise bad()
        return value
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad()
        return value
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad()
        return float(value)
    if isinstance(default, str):
        if not isinstance(value, str):
            raise bad()
        return value
    if default is None:  # an optional list of numbers (svf.level_spacing_mm): null or numbers, as floats
        if value is None:
            return None
        if not isinstance(value, list) or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                  for v in value):
            raise ValueError(f"preset key '{where}' must be null or a list of numbers, got {value!r}")
        return [float(v) for v in value]
    if isinstance(default, list):
        floats = bool(default) and isinstance(default[0], float)
        number = (int, float) if floats else int
        if not isinstance(value, list) or not all(isinstance(v, number) and not isinstance(v, bool) for v in value):
            raise bad()
        return [float(v) for v in value] if floats else value
    return value


#: ``need(ok, message)``: raise the settings' ``ValueError`` when ``ok`` is false (see :func:`validate`).
Need = Callable[[bool, str], None]


def _check_affine(a: AffineSettings, need: Need) -> None:
    need(a.similarity in AFFINE_SIMILARITIES, "affine.similarity must be one of "
         f"{', '.join(AFFINE_SIMILARITIES)} (the affine stage compares scattered voxels: no local windows)")
    need(len(a.shrink_factors) == len(a.iterations), "affine.shrink_factors and affine.iterations differ in length")
    need(all(f >= 1 for f in a.shrink_factors), "affine.shrink_factors must be >= 1")
    need(_one_per_level(a.level_spacing_mm, a.iterations),
         "affine.level_spacing_mm must be null or one finite size > 0 (mm) per entry of affine.iterations")
    need(all(i >= 0 for i in a.iterations) and a.rigid_iterations >= 0, "affine iterations must be >= 0")
    need(a.samples >= 10 and a.lr > 0, "affine.samples must be >= 10 and affine.lr > 0")
    need(a.sample_dilation_mm >= 0, "affine.sample_dilation_mm must be >= 0")


def _check_network(n: NetworkSettings, need: Need) -> None:
    need(n.activation in ACTIVATIONS, f"network.activation must be one of {', '.join(ACTIVATIONS)}")
    need(n.hidden_layers >= 1 and n.hidden_features >= 1, "network sizes must be >= 1")
    need(n.omega > 0 and n.fourier_frequencies >= 0, "network.omega must be > 0, fourier_frequencies >= 0")


def _check_optimisation(o: OptimisationSettings, need: Need) -> None:
    need(o.iterations >= 1 and o.patches >= 1 and o.patch_size >= 2, "optimisation: iterations >= 1, patches >= 1, "
         "patch_size >= 2")
    need(o.optimizer.lower() in OPTIMIZERS, f"optimisation.optimizer must be one of {', '.join(OPTIMIZERS)}")
    need(o.lr > 0 and o.weight_decay >= 0, "optimisation.lr must be > 0 and weight_decay >= 0")
    need(o.regulariser_points >= 0, "optimisation.regulariser_points must be >= 0")
    need(math.isfinite(o.image_spacing_mm) and o.image_spacing_mm >= 0,
         "optimisation.image_spacing_mm must be a finite size >= 0 (mm; 0: the images as given)")
    need(len(o.smoothing_mm) >= 1 and all(v >= 0 for v in o.smoothing_mm),
         "optimisation.smoothing_mm must be a non-empty list of sigmas >= 0 (mm)")
    need(len(o.smoothing_mm) <= o.iterations, "optimisation.smoothing_mm has more levels than iterations")
    need(o.lr_schedule in LR_SCHEDULES, f"optimisation.lr_schedule must be one of {', '.join(LR_SCHEDULES)}")
    need(0 < o.lr_final_fraction <= 1, "optimisation.lr_final_fraction must be in (0, 1]")


def _check_loss(l: LossSettings, method: str, need: Need) -> None:
    allowed = SVF_SIMILARITIES if method == "svf" else SIMILARITIES
    need(l.similarity in allowed, f"loss.similarity must be one of {', '.join(allowed)}"
         + ("" if method == "svf" else " (lncc alone: method svf only)"))
    need(l.regulariser in REGULARISERS, f"loss.regulariser must be one of {', '.join(REGULARISERS)}")
    need(l.alpha >= 0 and l.lncc_window >= 1, "loss.alpha must be >= 0 and lncc_window >= 1")


def _check_svf(settings: "RegistrationSettings", need: Need) -> None:
    """The ``svf`` method's own section, and the loss it supports."""
    v = settings.svf
    need(v.control_spacing_mm > 0 and v.margin_mm >= 0, "svf.control_spacing_mm must be > 0 and margin_mm >= 0")
    need(0 <= v.squaring_steps <= 20, "svf.squaring_steps must be in 0..20")
    need(len(v.iterations) >= 1 and (v.level_spacing_mm is not None or len(v.shrink_factors) == len(v.iterations)),
         "svf.shrink_factors (or level_spacing_mm, which replaces it) and svf.iterations must be non-empty lists "
         "of the same length")
    need(all(f >= 1 for f in v.shrink_factors) and all(i >= 0 for i in v.iterations),
         "svf.shrink_factors must be >= 1 and svf.iterations >= 0")
    need(_one_per_level(v.level_spacing_mm, v.iterations),
         "svf.level_spacing_mm must be null or one finite size > 0 (mm) per entry of svf.iterations")
    need(_one_per_level(v.level_control_spacing_mm, v.iterations),
         "svf.level_control_spacing_mm must be null or one finite spacing > 0 (mm) per entry of svf.iterations")
    need(_one_per_level(v.level_lncc_window_mm, v.iterations),
         "svf.level_lncc_window_mm must be null or one finite window > 0 (mm) per entry of svf.iterations")
    need(v.lr > 0 and 0 < v.lr_final_fraction <= 1, "svf.lr must be > 0 and lr_final_fraction in (0, 1]")
    need(v.lncc_window_mm > 0 and v.velocity_smoothing_mm >= 0 and v.diffusion_alpha >= 0,
         "svf.lncc_window_mm must be > 0, velocity_smoothing_mm and diffusion_alpha >= 0")
    need(0 <= v.similarity_dilation_mm <= v.margin_mm,
         "svf.similarity_dilation_mm must be between 0 and svf.margin_mm")
    need(v.folding_alpha >= 0 and 0 <= v.folding_floor < 1,
         "svf.folding_alpha must be >= 0 and svf.folding_floor in [0, 1)")
    need(v.mind_alpha >= 0 and math.isfinite(v.mind_alpha) and math.isfinite(v.mind_distance_mm)
         and v.mind_distance_mm > 0, "svf.mind_alpha must be >= 0 and svf.mind_distance_mm > 0 (mm)")
    need(v.level_mind_alpha is None or (len(v.level_mind_alpha) == len(v.iterations)
                                        and all(math.isfinite(w) and w >= 0 for w in v.level_mind_alpha)),
         "svf.level_mind_alpha must be null or one finite weight >= 0 per entry of svf.iterations")
    need(v.network in SVF_NETWORKS, f"svf.network must be one of {', '.join(SVF_NETWORKS)}")
    h = v.hash
    frozen = v.level_frozen_hash_levels
    need(frozen is None or (v.network == "hash-grid" and len(frozen) == len(v.iterations)
                            and all(float(n).is_integer() and 0 <= n <= h.levels for n in frozen)),
         "svf.level_frozen_hash_levels must be null or, with svf.network hash-grid, one whole number in "
         "0..svf.hash.levels per entry of svf.iterations")
    need(1 <= h.levels <= 16 and 1 <= h.features_per_level <= 8 and 4 <= h.log2_table_size <= 24,
         "svf.hash needs levels in 1..16, features_per_level in 1..8 and log2_table_size in 4..24")
    need(h.base_resolution >= 2 and math.isfinite(h.finest_mm) and h.finest_mm > 0,
         "svf.hash needs base_resolution >= 2 and finest_mm > 0 (mm)")
    need(h.hidden_layers >= 0 and h.hidden_features >= 1 and h.backend in BACKENDS,
         f"svf.hash needs hidden_layers >= 0, hidden_features >= 1 and backend in {', '.join(BACKENDS)}")
    need(h.coarse_to_fine_steps >= 0, "svf.hash.coarse_to_fine_steps must be >= 0 (steps)")
    need(h.coarse_to_fine_steps == 0 or v.network == "hash-grid",
         "svf.hash.coarse_to_fine_steps needs svf.network hash-grid (the levels it fades in)")
    need(settings.loss.regulariser in SVF_REGULARISERS,
         f"method svf regularises with loss.regulariser {' or '.join(map(repr, SVF_REGULARISERS))}")


def _check_two_network(settings: "RegistrationSettings", need: Need) -> None:
    """The two-network method's own section."""
    t = settings.two_network
    need(t.motion in MOTIONS, f"two_network.motion must be one of {', '.join(MOTIONS)}")
    need(t.backend in BACKENDS, f"two_network.backend must be one of {', '.join(BACKENDS)}")
    for key in ("motion_hash", "image_hash"):
        h = getattr(t, key)
        need(h.levels >= 1 and h.features_per_level >= 1, f"two_network.{key}: levels and "
             "features_per_level must be >= 1")
        need(4 <= h.log2_table_size <= 30, f"two_network.{key}.log2_table_size must be in 4..30")
        need(h.base_resolution >= 2 and h.growth_factor >= 1.0, f"two_network.{key}: base_resolution must be "
             ">= 2 and growth_factor >= 1")
    need(t.hidden_features >= 1 and t.hidden_layers >= 1, "two_network network sizes must be >= 1")
    need(t.iterations >= 1 and t.points >= 1, "two_network: iterations and points must be >= 1")
    need(t.motion_hidden_features >= 1 and t.motion_hidden_layers >= 1, "two_network motion network sizes "
         "must be >= 1")
    need(t.lr > 0 and t.motion_lr > 0, "two_network: lr and motion_lr must be > 0")
    need(0 <= t.motion_warmup <= 1, "two_network.motion_warmup must be in [0, 1]")
    need(0 < t.coarse_to_fine_target <= 1, "two_network.coarse_to_fine_target must be in (0, 1]")
    need(t.domain_margin >= 0, "two_network.domain_margin must be >= 0")


def _check_variants(settings: "RegistrationSettings", need: Need) -> None:
    """The variants' section (omega control for every single-network method, and the variant's own keys)."""
    v = settings.variants
    need(v.omega_mode in OMEGA_MODES, f"variants.omega_mode must be one of {', '.join(OMEGA_MODES)}")
    if settings.method == "two-network":
        return
    need(v.omega_mode == "fixed" or settings.network.activation in PERIODIC,
         f"variants.omega_mode '{v.omega_mode}' needs a periodic activation, not '{settings.network.activation}'")
    need(v.omega_delta >= 0 and v.omega_lr > 0, "variants.omega_delta must be >= 0 and omega_lr > 0")
    need(v.omega_mode != "width" or v.omega_delta < settings.network.omega,
         "variants.omega_delta must be below network.omega for omega_mode 'width' (omega stays > 0)")
    if settings.method == "ensemble":
        need(len(v.ensemble_omegas) >= 1 and all(w > 0 for w in v.ensemble_omegas),
             "variants.ensemble_omegas must hold at least one omega > 0")
    if settings.method == "cascade":
        need(len(v.cascade_alphas) >= 1 and all(a >= 0 for a in v.cascade_alphas),
             "variants.cascade_alphas must hold one weight >= 0 per stage")
        need(not v.cascade_iterations or (len(v.cascade_iterations) == len(v.cascade_alphas)
                                          and all(i >= 0 for i in v.cascade_iterations)),
             "variants.cascade_iterations must be empty or hold one count >= 0 per stage")
    need(v.cycle_alpha >= 0 and v.fusion_sigma_mm > 0, "variants.cycle_alpha must be >= 0 and fusion_sigma_mm > 0")


#: ``method`` -> the check of its own settings section (the common sections are checked for all)
METHOD_CHECKS: dict[str, Callable[["RegistrationSettings", Need], None]] = {
    "svf": _check_svf, "two-network": _check_two_network}


def validate(settings: "RegistrationSettings") -> "RegistrationSettings":
    """Check values (names, ranges, list lengths) before any work starts; ``ValueError`` otherwise."""

    def need(ok: bool, message: str) -> None:
        if not ok:
            raise ValueError(f"preset '{settings.name}': {message}")

    for where, value in _numbers(settings, ""):
        need(math.isfinite(value), f"{where} must be a finite number, got {value!r}")
    _check_affine(settings.affine, need)
    _check_network(settings.network, need)
    _check_optimisation(settings.optimisation, need)
    _check_loss(settings.loss, settings.method, need)
    need(settings.inverse_iterations >= 0, "inverse_iterations must be >= 0")
    need(settings.method in METHODS + VARIANT_METHODS,
         f"method must be one of {', '.join(METHODS + VARIANT_METHODS)}")
    _check_variants(settings, need)
    if settings.method in METHOD_CHECKS:
        METHOD_CHECKS[settings.method](settings, need)
    return settings


def _numbers(settings: Any, where: str):
    """``(key path, value)`` of every float setting, lists element by element, sections recursively
    (JSON reads ``1e309`` as inf and Python's JSON takes ``NaN``/``Infinity``: no range check sees those)."""
    for f in fields(settings):
        value = getattr(settings, f.name)
        key = f"{where}.{f.name}" if where else f.name
        if is_dataclass(value):
            yield from _numbers(value, key)
        elif isinstance(value, float):
            yield key, value
        elif isinstance(value, list):
            yield from ((f"{key}[{i}]", v) for i, v in enumerate(value) if isinstance(v, float))


def available_presets() -> list[str]:
    """Names of the presets shipped with inrreg."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.json"))


def load_preset(name_or_path: str) -> RegistrationSettings:
    """Settings from a shipped preset name or a JSON file path (``ValueError`` on any problem).

    A ``"base"`` key is resolved first (see the module docstring); the result records the preset's
    own name, not its base's.
    """
    path = _preset_path(name_or_path)
    values = _preset_values(path, chain=())
    values.setdefault("name", path.stem)
    return validate(_fill(RegistrationSettings, values, path.stem))


def _preset_path(name_or_path: str, relative_to: Path | None = None) -> Path:
    """The JSON file of a preset: a path, or a shipped name.

    For a ``"base"`` (``relative_to`` = the inheriting preset's folder), a name ending in ``.json``
    is a path relative to that folder and any other name is a shipped preset.
    """
    path = Path(name_or_path)
    if relative_to is not None and path.suffix == ".json" and not path.is_absolute():
        path = relative_to / path
    if not (path.suffix == ".json" or (relative_to is None and path.exists())):
        path = PRESET_DIR / f"{name_or_path}.json"
        if not path.exists():
            raise ValueError(f"unknown preset '{name_or_path}' (shipped: {', '.join(available_presets())}; "
                             "or give a JSON file)")
    if path.is_dir():
        raise ValueError(f"preset '{path}' is a directory, not a JSON file")
    if not path.is_file():
        raise ValueError(f"preset file '{path}' does not exist")
    return path


def _preset_values(path: Path, chain: tuple[Path, ...]) -> dict[str, Any]:
    """The JSON object of ``path`` laid over its ``"base"`` preset's (recursively), ``"base"`` removed."""
    if path.resolve() in chain:
        loop = " -> ".join(p.stem for p in (*chain, path.resolve()))
        raise ValueError(f"preset '{path.stem}' inherits from itself ({loop})")
    try:
        values = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"preset file '{path}' is not valid JSON: {err}") from None
    if not isinstance(values, dict):
        raise ValueError(f"preset file '{path}' must hold a JSON object")
    base = values.pop("base", None)
    if base is None:
        return values
    if not isinstance(base, str) or not base:
        raise ValueError(f"preset key '{path.stem}.base' must name a preset, got {base!r}")
    base_path = _preset_path(base, relative_to=path.parent)
    merged = _preset_values(base_path, (*chain, path.resolve()))
    merged.pop("name", None)
    merged.pop("description", None)
    return _overlay(merged, values)


def _overlay(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``over``'s keys replacing its own; objects (preset sections) are merged key by key."""
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _overlay(merged[key], value)
        else:
            merged[key] = value
    return merged
