# What the kernel extensions take from fastlstm._runtime at the C level. Each of them
# binds its kernels to the process's one instruction-set level when it loads:
#     fl_isa_bind(isa_level_for(__name__))

cdef extern from "fastlstm_isa.h" nogil:
    void fl_isa_bind(const int *level)

cdef const int *isa_level_for(str module) except NULL
