"""``python -m fastlstm``: the ``fastlstm`` command (see ``fastlstm.cli``)."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
