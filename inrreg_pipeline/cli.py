"""``inrreg``: register a pair, apply transforms, evaluate label overlap, run the embedded demo.

Exit codes: 0 success; 2 bad input or usage (one line on stderr, nothing written); 1 internal
failure (one line on stderr; ``-v`` adds the traceback); 130 interrupted (Ctrl-C / SIGINT) and 143
terminated (SIGTERM), one line, nothing written and the staging folder removed.
"""
from __future__ import annotations

import argparse
import signal
import sys
import traceback

from . import __version__
from .apply import apply_transforms
from .baselines import is_baseline_preset, run_baseline
from .core.choices import ACTIVATIONS, MOTIONS, OMEGA_MODES, SEED_MAX, VARIANT_METHODS
from .demo import run_demo
from .evaluate import evaluate_labels
from .io.images import InputError
from .presets import available_presets
from .register import register_files

EXIT_OK, EXIT_FAILURE, EXIT_BAD_INPUT = 0, 1, 2
#: 128 + SIGINT, what a shell reports for a command stopped by Ctrl-C
EXIT_INTERRUPTED = 130
#: 128 + SIGTERM, what schedulers send at a time limit
EXIT_TERMINATED = 143


def _register_parser(sub) -> None:
    p = sub.add_parser(
        "register", help="register MOVING to FIXED with a deformation INR (after an affine stage)",
        description="Register MOVING to FIXED. Writes, for output prefix P, what antsRegistration writes "
                    "(P0GenericAffine.mat, P1Warp.nii.gz, P1InverseWarp.nii.gz, PComposite.h5, "
                    "PInverseComposite.h5, PWarped.nii.gz, PInverseWarped.nii.gz) plus Pjacobian.nii.gz and "
                    "Pregistration.json. Apply with: inrreg apply MOVING -r FIXED -t P1Warp.nii.gz "
                    "-t P0GenericAffine.mat (or antsApplyTransforms with the same -t list).")
    p.add_argument("fixed", metavar="FIXED", help="fixed (reference) image, 2-D or 3-D: NIfTI or any format ITK "
                                                  "reads (.mha, .mhd, .nrrd); outputs are NIfTI")
    p.add_argument("moving", metavar="MOVING", help="moving image (NIfTI, .mha, .mhd, .nrrd), same dimension as "
                                                    "FIXED")
    p.add_argument("-o", "--output", required=True, metavar="PREFIX", help="output prefix, e.g. out/sub-01_")
    p.add_argument("--preset", metavar="NAME|FILE",
                   help=f"settings preset: one of {', '.join(available_presets())}, or a JSON file (default: the "
                        "method's own: two-network-rigid/-deformable for --method two-network (by --motion), default "
                        "(the displacement SIREN) for --method siren or a variant and for --omega/--activation alone, "
                        "else svf, the diffeomorphic velocity INR); research variants: benchmarks/presets/*.json; the baselines "
                        "ants-syn, ants-syn-cc, ants-precise, antspyx-syn-s and antspyx-synquick-s "
                        "(antsRegistration through antspyx), greedy and greedy-permissive (picsl-greedy) and "
                        "fireants and fireants-syn (FireANTs) run those tools instead and write the same files")
    p.add_argument("--method", choices=("siren", "two-network", "svf") + VARIANT_METHODS,
                   help="siren: deformation INR after an affine stage; two-network: motion + image networks with "
                        "hash encodings; svf: diffeomorphic velocity INR (scaling and squaring; preset svf); "
                        "joint-affine, ensemble, cascade, cycle, fusion: the INR variants "
                        "(settings under the preset's \"variants\"; e.g. benchmarks/presets/fast-cascade.json); "
                        "two-network and svf need a preset of that method (default: what the preset says)")
    p.add_argument("--omega", choices=OMEGA_MODES,
                   help="frequency control of the periodic INR layers: fixed, trainable (init 30), width (10..50 "
                        "across each layer), attention (30 + 20 tanh(a mean|z| + b)) (default: the preset's)")
    p.add_argument("--activation", choices=ACTIVATIONS,
                   help="activation of the INR layers (default: the preset's, sine)")
    p.add_argument("--motion", choices=MOTIONS,
                   help="two-network granularity: rigid (coarsest motion level only), deformable, or an explicit "
                        "affine parameterisation")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N (default: auto)")
    p.add_argument("--seed", type=seed_int, default=0,
                   help=f"random seed in [0, {SEED_MAX}]; the same seed gives the same result on CPU (default: 0)")
    p.add_argument("--fixed-mask", metavar="FILE", help="mask on FIXED's grid: where the similarity is sampled")
    p.add_argument("--moving-mask", metavar="FILE", help="mask on MOVING's grid: only its inside is compared")
    p.add_argument("--no-affine", action="store_true", help="skip the affine stage (inputs already aligned)")
    p.add_argument("--threads", type=positive_int, metavar="N", help="CPU threads for torch (default: torch's choice)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (they are off when not a TTY)")


def _apply_parser(sub) -> None:
    p = sub.add_parser(
        "apply", help="resample an image or label map through transform files",
        description="Resample INPUT onto REFERENCE's grid through transforms given in antsApplyTransforms "
                    "order (-t P1Warp.nii.gz -t P0GenericAffine.mat, or -t PComposite.h5; '[file,1]' inverts "
                    "a linear transform). Label maps: --interpolation label (label-aware) or nearest.")
    p.add_argument("input", metavar="INPUT", help="image or label map to resample (NIfTI, .mha, .mhd, .nrrd)")
    p.add_argument("-r", "--reference", required=True, metavar="REFERENCE",
                   help="image whose grid the output takes (NIfTI, .mha, .mhd, .nrrd)")
    p.add_argument("-t", "--transform", action="extend", nargs="+", required=True, metavar="TRANSFORM",
                   help="transform files (.mat, .txt, .h5, displacement-field NIfTI) in ANTs order: "
                        "-t A -t B or -t A B (the same)")
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="output NIfTI path")
    p.add_argument("--interpolation", default="linear", choices=("linear", "nearest", "label"),
                   help="linear for intensities; label (like ANTs GenericLabel) or nearest for label maps")
    p.add_argument("--device", default="cpu", help="cpu, auto, cuda or cuda:N (default: cpu)")


def _evaluate_parser(sub) -> None:
    p = sub.add_parser(
        "evaluate", help="Dice/Jaccard/HD95/ASSD per label (and folding) between fixed and warped labels",
        description="Compare the fixed image's label map with the moving labels warped onto the fixed grid "
                    "(inrreg apply --interpolation label). Writes per-label rows and summary rows (mean, "
                    "volume-weighted mean and minimum Dice, mean HD95/ASSD in mm; with --jacobian, %% det J <= 0 "
                    "and SD of log det J inside the labels or --mask).")
    p.add_argument("--fixed-labels", required=True, metavar="A", help="label map on the fixed grid")
    p.add_argument("--warped-labels", required=True, metavar="B", help="warped moving labels, same grid")
    p.add_argument("--labels-tsv", metavar="T", help="BIDS dseg.tsv (index, name): evaluate these labels, named")
    p.add_argument("--jacobian", metavar="J", help="Pjacobian.nii.gz from inrreg register")
    p.add_argument("--mask", metavar="M", help="region for the Jacobian statistics (default: fixed labels > 0)")
    p.add_argument("-o", "--output", required=True, metavar="OUT.tsv", help="output table")


def _demo_parser(sub) -> None:
    p = sub.add_parser(
        "demo", help="register the embedded default pair (nilearn's MNI152 vs a known deformation of it)",
        description="Make a pair from nilearn's MNI152 template (ICBM 2009a, 2 mm) and a copy under a known smooth "
                    "deformation and affine on an oblique anisotropic grid, register it, and report the error "
                    "against the truth and the grey-matter Dice before and after.")
    p.add_argument("-o", "--output", default="demo_output", metavar="DIR", help="output folder (default: demo_output)")
    p.add_argument("--preset", default="fast", metavar="NAME|FILE", help="settings preset (default: fast)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    p.add_argument("--seed", type=seed_int, default=0, help=f"random seed in [0, {SEED_MAX}] (default: 0)")
    p.add_argument("--threads", type=positive_int, metavar="N")


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (the CLI's and the BIDS App's thread and process counts)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got '{text}'") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got '{text}'")
    return value


def seed_int(text: str) -> int:
    """argparse type: a random seed, an integer in [0, :data:`SEED_MAX`]."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer in [0, {SEED_MAX}], got '{text}'") from None
    if not 0 <= value <= SEED_MAX:
        raise argparse.ArgumentTypeError(f"expected an integer in [0, {SEED_MAX}], got '{text}'")
    return value


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2, as for every other bad input
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="inrreg", description="Image registration with untrained implicit neural representations.")
    parser.add_argument("--version", action="version", version=f"inrreg {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="print tracebacks of internal failures")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _register_parser(sub)
    _apply_parser(sub)
    _evaluate_parser(sub)
    _demo_parser(sub)
    return parser


def _run(args: argparse.Namespace) -> None:
    if args.command == "register":
        if args.preset is not None and is_baseline_preset(args.preset):
            outputs = run_baseline(args.fixed, args.moving, args.output, preset=args.preset, threads=args.threads,
                                   seed=args.seed, fixed_mask=args.fixed_mask, moving_mask=args.moving_mask)
        else:
            outputs = register_files(args.fixed, args.moving, args.output, preset=args.preset, device=args.device,
                                     seed=args.seed, fixed_mask=args.fixed_mask, moving_mask=args.moving_mask,
                                     use_affine=not args.no_affine, threads=args.threads,
                                     progress=False if args.no_progress else None, method=args.method,
                                     motion=args.motion, omega=args.omega, activation=args.activation)
        print(f"inrreg: outputs written with prefix {args.output}")
        for key, path in outputs.items():
            print(f"  {key:<18} {path}")
    elif args.command == "apply":
        out = apply_transforms(args.input, args.reference, args.transform, args.output, args.interpolation,
                               args.device)
        print(f"inrreg: wrote {out}")
    elif args.command == "evaluate":
        _, summary = evaluate_labels(args.fixed_labels, args.warped_labels, args.output, args.labels_tsv,
                                     args.jacobian, args.mask)
        print(f"inrreg evaluate: {summary['n_labels']} labels, Dice mean {summary['mean_dice']:.4f}, "
              f"volume-weighted {summary['weighted_mean_dice']:.4f}, min {summary['min_dice']:.4f} "
              f"(label {summary['min_dice_label']}), HD95 mean {summary['mean_hd95_mm']:.2f} mm, "
              f"{summary['n_missing']} missing")
        if "percent_det_jacobian_nonpositive" in summary:
            print(f"inrreg evaluate: {summary['percent_det_jacobian_nonpositive']:.4f}% det J <= 0, "
                  f"SD log J {summary['sd_log_jacobian']:.4f}")
        print(f"inrreg evaluate: wrote {args.output}")
    elif args.command == "demo":
        summary = run_demo(args.output, preset=args.preset, device=args.device, seed=args.seed, threads=args.threads)
        err = summary["error_mm_mean"]
        gm = summary["grey_matter_dice"]
        print(f"inrreg demo: mean error vs truth {err['before']:.2f} mm before, {err['affine']:.2f} mm after affine, "
              f"{err['affine+inr']:.2f} mm after affine+INR")
        print(f"inrreg demo: grey-matter Dice {gm['before']:.3f} before, {gm['after']:.3f} after; "
              f"{summary['percent_det_jacobian_nonpositive']:.3f}% of brain voxels with det J <= 0; "
              f"{summary['runtime_s']:.0f} s on {summary['device']}")
        print(f"inrreg demo: outputs in {args.output}/ (transforms demo_0GenericAffine.mat, demo_1Warp.nii.gz; "
              f"summary demo_summary.json)")


class Terminated(BaseException):
    """Raised by the SIGTERM handler of :func:`main`, so that cleanup (``finally``, staged outputs)
    runs as for Ctrl-C instead of the process dying with its staging folder in place."""


def _on_sigterm(signum, frame) -> None:
    raise Terminated


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:  # not the main thread: leave signals alone
        previous = None
    try:
        _run(args)
    except Terminated:
        print("inrreg: terminated (SIGTERM)", file=sys.stderr)
        return EXIT_TERMINATED
    except InputError as err:
        print(f"inrreg: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("inrreg: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as err:  # internal failure: one line unless -v
        if args.verbose:
            traceback.print_exc()
        print(f"inrreg: internal error: {type(err).__name__}: {err}".splitlines()[0], file=sys.stderr)
        return EXIT_FAILURE
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
