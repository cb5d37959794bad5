"""``python -m vmcores``: build kernels and fixtures."""

import argparse
import sys


def main(argv=None) -> int:
    from . import debian, kernel
    from .scenarios import UnknownScenario

    p = argparse.ArgumentParser(prog="python -m vmcores", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    k = sub.add_parser("kernel", help="build a fixture kernel (cached)")
    k.add_argument("key", help="a fixture kernel (%s) or any Debian series X.Y"
                   % ", ".join(sorted(kernel.KERNELS)))
    k.add_argument("--commit", action="store_true",
                   help="copy bzImage, config and vmlinux.xz into vmcores/kernels/KEY")
    b = sub.add_parser("build", help="build one fixture: KERNEL SCENARIO")
    b.add_argument("kernel", help="kernel key (6.12, 6.12-marking, ...) or any Debian series X.Y: "
                   "the newest point release a reachable Debian suite has is built")
    b.add_argument("scenario")
    b.add_argument("--out", help="output directory (default: vmcores/fixtures)")
    b.add_argument("--committed-kernel", action="store_true",
                   help="boot the kernel committed in vmcores/kernels/KERNEL instead of "
                   "building it, so the new dump pairs with its committed vmlinux.xz "
                   "(faultmod.ko builds against that kernel's exact Debian source)")
    sub.add_parser("list", help="list scenarios")
    args = p.parse_args(argv)
    try:
        return run(args)
    except (debian.Unavailable, UnknownScenario) as e:
        # What the user asked for does not exist (a series no suite has, a
        # scenario no kernel has): one line, exit 2.  Build failures keep
        # their traceback and the failing command's output.
        print(f"{p.prog}: error: {e}", file=sys.stderr)
        return 2


def run(args: argparse.Namespace) -> int:
    from . import kernel
    if args.cmd == "list":
        from .scenarios import SCENARIOS
        for name, sc in sorted(SCENARIOS.items()):
            print(f"{name}: {sc.doc}")
        return 0
    if args.cmd == "build":
        from pathlib import Path

        from .fixture import build_fixture
        kw = {"out_dir": Path(args.out)} if args.out else {}
        print(build_fixture(args.kernel, args.scenario,
                            committed_kernel=args.committed_kernel, **kw))
        return 0
    if args.cmd == "kernel":
        out = kernel.commit_kernel(args.key) if args.commit else kernel.build_kernel(args.key)
        print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
