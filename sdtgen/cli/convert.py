"""`sdtgen convert`: pretrained DiT weights (original .pt or diffusers) into an SDTDiT folder."""

from __future__ import annotations

import argparse

from sdtgen.cli.options import ATTENTION_VARIANTS, out_folder

EPILOG = """\
sources:
  --from dit        an original facebookresearch DiT checkpoint (.pt): the released
                    DiT-XL-2-256x256.pt, or a training checkpoint of DiT's train.py
                    (its EMA weights are used)
  --from diffusers  a diffusers DiT folder: a DiTPipeline folder such as a download of
                    facebook/DiT-XL-2-256, or its transformer/ subfolder

attention:
  vanilla reproduces the pretrained DiT exactly. sdt, sdt-decomposed and learned-fixed
  warm-start SDT: the pretrained weights plus a spatial decay that starts tiny
  (--decay-scale-init, default 1e-4) and trains. fixed, sdt-decomposed, --rope and
  --qk-norm change the output (a warning says so); fine-tune before sampling.

examples:
  sdtgen convert --from dit DiT-XL-2-256x256.pt --out models/dit-xl-2
  sdtgen convert --from diffusers ~/DiT-XL-2-256 --out models/sdt-xl-2 --attention sdt
"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Declare `sdtgen convert` on `subparsers`."""
    parser = subparsers.add_parser(
        "convert",
        help="convert pretrained DiT weights (original .pt or diffusers) into an SDTDiT folder",
        description="Convert pretrained DiT weights into an SDTDiT model folder (config.json + safetensors), "
        "loadable with SDTDiT.from_pretrained and usable as a training starting point.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--from",
        dest="source_format",
        required=True,
        choices=("dit", "diffusers"),
        help="the kind of SOURCE (see below)",
    )
    parser.add_argument(
        "source", metavar="SOURCE", help="the .pt file (--from dit) or the model / pipeline folder (--from diffusers)"
    )
    parser.add_argument(
        "--out",
        required=True,
        type=out_folder,
        metavar="DIR",
        help="folder to write the SDTDiT to (created if missing)",
    )
    parser.add_argument(
        "--attention",
        default="vanilla",
        choices=ATTENTION_VARIANTS,
        help="attention of the new model (default: vanilla)",
    )
    parser.add_argument(
        "--decay-scale-init",
        type=float,
        metavar="X",
        help="initial decay strength for a warm start (default: 1e-4; 1 = from-scratch strength)",
    )
    parser.add_argument(
        "--num-heads", type=int, metavar="N", help="--from dit only: heads, for widths outside DiT's S/B/L/XL table"
    )
    parser.add_argument(
        "--input-size",
        type=int,
        metavar="N",
        help="latent size to run at, if not the checkpoint's (positions are recomputed)",
    )
    parser.add_argument("--lepe", action="store_true", help="add LePE (zero-initialised, keeps the warm start exact)")
    parser.add_argument("--rope", action="store_true", help="add 2D RoPE (changes the output)")
    parser.add_argument("--qk-norm", action="store_true", help="add q/k LayerNorm (changes the output)")
    parser.set_defaults(run=run, parser=parser)


def run(args: argparse.Namespace) -> None:
    """Convert, save, and say what was written."""
    from sdtgen.convert import convert_diffusers_dit, convert_original_dit

    overrides = {"lepe": args.lepe, "rope": args.rope, "qk_norm": args.qk_norm}
    if args.decay_scale_init is not None:
        overrides["decay_scale_init"] = args.decay_scale_init
    if args.input_size is not None:
        overrides["input_size"] = args.input_size
    if args.source_format == "dit":
        model = convert_original_dit(args.source, attention=args.attention, num_heads=args.num_heads, **overrides)
    elif args.num_heads is not None:
        raise ValueError("--num-heads is only for --from dit; a diffusers config already names its heads.")
    else:
        model = convert_diffusers_dit(args.source, attention=args.attention, **overrides)
    model.save_pretrained(args.out)
    config = model.config
    print(
        f"Saved SDTDiT (depth {config.depth}, width {config.hidden_size}, {config.num_heads} heads, "
        f"patch {config.patch_size}, {config.input_size}x{config.input_size}x{config.in_channels} input, "
        f"{config.num_classes} classes, attention {config.attention}) to {args.out}"
    )
