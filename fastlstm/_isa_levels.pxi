# Included by every extension module: each holds its own copy of the level
# (csrc/fastlstm_isa.h), and fastlstm._isa sets all of them to the same one.
def isa_level():
    """The level this module's kernels run at: 0 generic, 1 AVX2+FMA, 2 AVX-512."""
    return fl_isa()


def best_isa_level():
    """The best level this CPU runs and this build has kernels for."""
    return fl_isa_best()


def set_isa_level(int level):
    """Run at ``level``, or at the CPU's best when that is lower; returns the level now
    in use. Only while no kernel runs (fastlstm._isa.set_isa)."""
    return fl_isa_set(level)
