# What the kernel extensions take from fastlstm._runtime at the C level. Each of them
# binds its kernels to the process's one instruction-set level when it loads:
#     fl_isa_bind(isa_level_for(__name__))

cdef extern from "fastlstm_isa.h" nogil:
    void fl_isa_bind(const int *level)

cdef const int *isa_level_for(str module) except NULL

# Whether a backward's float32 step products dh = d_gates W_h^T pay for packing W_h^T
# once per call: more than one row a step and at least the set number of (step, row)
# products per thread (set_backward_pack_min_step_rows).
cdef bint backward_pack_pays(int T, int rows_per_thread) noexcept nogil
