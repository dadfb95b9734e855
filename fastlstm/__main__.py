"""The ``fastlstm`` command (also ``python -m fastlstm``).

    fastlstm demo [--steps N] [--threads N]   train a small char-level LSTM LM and sample
    fastlstm config                           what show_config() prints
    fastlstm --version
"""
import argparse
import sys


def main(argv=None):
    from . import __version__
    parser = argparse.ArgumentParser(prog="fastlstm", description="Fast LSTMs on the CPU "
                                     "from NumPy.")
    parser.add_argument("--version", action="version", version=f"fastlstm {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.add_parser("demo", add_help=False,
                        help="train a small character-level LSTM on stdlib docstrings")
    commands.add_parser("config", help="show the build: compiled kernels, OpenMP, BLAS")
    args, rest = parser.parse_known_args(argv)
    if args.command == "demo":
        from . import demo
        return demo.main(rest)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.command == "config":
        from . import show_config
        show_config()
        return 0
    parser.print_help()
    return 0


if __name__ == "__main__":
    sys.exit(main())
