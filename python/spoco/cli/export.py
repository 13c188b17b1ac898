"""``spoco export``: a trained network as a bioimage.io model package."""
from __future__ import annotations

from . import CLIError


def add_parser(sub) -> None:
    p = sub.add_parser(
        "export", help="write a checkpoint as a bioimage.io model package (zip) to share the network",
        description="Write the network of a spoco train checkpoint as a bioimage.io model package (model spec "
        "0.5): rdf.yaml, TorchScript weights (need only PyTorch) and state-dict weights, test input/output "
        "computed on a test image, a cover image, and a README with the training settings and the clustering "
        "settings that turn the embeddings into instances. The package's network includes what spoco predict "
        "adds after the U-Net (coordinates, foreground probability), so its output equals spoco predict's; "
        "spoco predict --checkpoint accepts the package too. Needs the export extra: pip install 'spoco[export]'.")
    p.add_argument("--checkpoint", required=True, help="checkpoint (.pt) from spoco train")
    p.add_argument("--out", required=True, help="package file (.zip), or a folder for an unpacked package")
    p.add_argument("--name", help="model name: letters, digits, spaces, _+-() (default from the checkpoint)")
    p.add_argument("--test-image", help="image whose centre crop becomes the package's test input (default: a "
                   "generated image)")
    p.add_argument("--eval-network", choices=("f", "g"),
                   help="f: the trained network; g: its moving average (default: the one the run validated)")
    p.add_argument("--author", action="append", default=[], metavar="NAME",
                   help="a person who trained the model (repeat for several)")
    p.add_argument("--license", default="CC-BY-4.0", help="SPDX license id of the weights (default CC-BY-4.0)")
    p.add_argument("--no-test", action="store_true",
                   help="skip the bioimage.io test run of the written package (validation of rdf.yaml stays)")
    p.add_argument("--quiet", action="store_true", help="print nothing on success")
    p.set_defaults(func=run)


def run(args) -> int:
    try:
        from ..export import export_bioimageio
        out = export_bioimageio(args.checkpoint, args.out, name=args.name, test_image=args.test_image,
                                network=args.eval_network, authors=args.author, license=args.license)
    except ImportError as err:
        raise CLIError(str(err)) from None
    tested = ""
    if not args.no_test:
        from ..export.check import check_package

        try:
            status, report = check_package(out)
        except ImportError as err:  # bioimageio.spec without bioimageio.core: the package is still valid
            tested = f" (not test-run: {err})"
        else:
            if status != "passed":
                raise CLIError(f"{out} was written but failed the bioimage.io test run:\n{report}")
            tested = " (bioimage.io validation and test run passed)"
    if not args.quiet:
        print(f"{args.checkpoint} -> {out}{tested}")
    return 0
