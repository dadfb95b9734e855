"""Data-parallel training over MPI, through mpi4py (``pip install "fastlstm[mpi]"``).

Started as ``mpiexec -n N fastlstm train ...``, every rank holds the whole model, reads
its own share of each global batch (N times ``--batch``), and after the backward pass
the ranks average their gradients with one ``Allreduce`` over a single flat buffer, so
all of them take the same optimizer step and keep bitwise-identical weights. Rank 0
alone writes the log, the checkpoints and the progress bar. The result is, up to float
rounding, that of one process training on the N-times larger batch.

``context()`` returns the job's ``Context``: an MPI one when the process was started by
an MPI launcher with more than one rank, else a single-process one whose methods do
nothing, so training code calls them unconditionally.
"""
import os

import numpy as np

__all__ = ["Context", "context", "launched_by_mpi", "run_or_abort"]

# Environment variables MPI launchers set in the processes they start.
_LAUNCHER_VARS = ("PMI_SIZE", "PMI_RANK", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK",
                  "MPI_LOCALNRANKS", "SLURM_PMIXP_ABORT_AGENT_PORT")


def launched_by_mpi():
    """Whether an MPI launcher (mpiexec, mpirun, srun) started this process."""
    return any(v in os.environ for v in _LAUNCHER_VARS)


class Context:
    """One process's place in the job: ``rank``, ``size`` and the collective operations
    training needs. The single-process context (``size == 1``) does no communication."""

    def __init__(self, comm=None):
        self.comm = comm
        self.rank = comm.Get_rank() if comm is not None else 0
        self.size = comm.Get_size() if comm is not None else 1
        self._buffer = None
        if comm is not None:
            from mpi4py import MPI
            self._MPI = MPI
            local = comm.Split_type(MPI.COMM_TYPE_SHARED)
            self.local_size = local.Get_size()
            local.Free()
        else:
            self.local_size = 1

    @property
    def is_root(self):
        return self.rank == 0

    def __repr__(self):
        return f"Context(rank={self.rank}, size={self.size})"

    def shard(self, global_batch):
        """This rank's columns of a global batch of ``global_batch`` columns:
        a slice, the ranks' slices tiling it in rank order (the last ones may be
        shorter, or empty)."""
        per_rank = -(-global_batch // self.size)
        start = min(self.rank * per_rank, global_batch)
        return slice(start, min(start + per_rank, global_batch))

    def broadcast_parameters(self, model):
        """Overwrite every rank's weights (frozen ones included) with rank 0's, in one
        ``Bcast`` of a flat buffer."""
        if self.comm is None:
            return
        params = [p for _, p in model.named_parameters(include_frozen=True)]
        for dtype in sorted({p.data.dtype.str for p in params}):
            group = [p for p in params if p.data.dtype.str == dtype]
            flat = np.concatenate([p.data.ravel() for p in group])
            self.comm.Bcast(flat, root=0)
            offset = 0
            for p in group:
                p.data[...] = flat[offset:offset + p.data.size].reshape(p.data.shape)
                offset += p.data.size

    def average_gradients(self, params, weight, loss, stop, tokens=0):
        """Sum ``weight * grad`` over the ranks into every parameter's ``grad``, with one
        ``Allreduce`` (in place) over a flat buffer that also carries the loss, the stop
        request and the token count.

        ``weight`` is this rank's share of the global batch (its examples over all
        ranks'), so the result is the gradient of the global batch's mean loss.
        Returns ``(global mean loss, whether any rank asked to stop, global tokens)``.
        """
        if self.comm is None:
            return loss, stop, tokens
        n = sum(p.grad.size for p in params)
        dtype = params[0].grad.dtype
        if self._buffer is None or self._buffer.size != n + 3 or self._buffer.dtype != dtype:
            self._buffer = np.empty(n + 3, dtype)
        buf = self._buffer
        offset = 0
        for p in params:
            size = p.grad.size
            np.multiply(p.grad.ravel(), dtype.type(weight), out=buf[offset:offset + size])
            offset += size
        buf[n:] = loss * weight, 1.0 if stop else 0.0, tokens
        self.comm.Allreduce(self._MPI.IN_PLACE, buf, op=self._MPI.SUM)
        offset = 0
        for p in params:
            size = p.grad.size
            p.grad[...] = buf[offset:offset + size].reshape(p.grad.shape)
            offset += size
        return float(buf[n]), bool(buf[n + 1] > 0), int(round(float(buf[n + 2])))

    def sum(self, values):
        """Element-wise float64 sum of a few numbers over the ranks (for evaluation)."""
        values = np.asarray(values, dtype=np.float64)
        if self.comm is None:
            return values
        out = np.empty_like(values)
        self.comm.Allreduce(values, out, op=self._MPI.SUM)
        return out

    def agree(self, flag):
        """True on every rank when ``flag`` is true on any."""
        return bool(self.sum([1.0 if flag else 0.0])[0] > 0)

    def broadcast_object(self, obj):
        """Rank 0's ``obj`` on every rank (small, picklable values: bytes, settings)."""
        if self.comm is None:
            return obj
        return self.comm.bcast(obj, root=0)

    def abort(self, code=1):
        """End every rank of the job now (one rank's error must not leave the others
        waiting forever in a collective)."""
        if self.comm is not None:
            self.comm.Abort(code)


_context = None


def context():
    """The job's Context (created once). Under an MPI launcher this imports mpi4py,
    which must then be installed; otherwise no MPI is touched."""
    global _context
    if _context is None:
        comm = None
        if launched_by_mpi():
            try:
                from mpi4py import MPI
            except ImportError:
                raise ImportError("started by an MPI launcher, but mpi4py is not "
                                  "installed: pip install \"fastlstm[mpi]\"") from None
            if MPI.COMM_WORLD.Get_size() > 1:
                comm = MPI.COMM_WORLD
        _context = Context(comm)
    return _context


def run_or_abort(fn, *args, **kwargs):
    """``fn(*args, **kwargs)``, except that under MPI an exception on any rank is reported
    and then ends the whole job (``MPI_Abort``): the other ranks would otherwise wait
    forever in their next collective."""
    dist = context()
    if dist.size == 1:
        return fn(*args, **kwargs)
    import sys
    import traceback
    try:
        return fn(*args, **kwargs)
    except SystemExit:
        raise
    except BaseException as exc:                  # noqa: BLE001 - reported, then abort
        if isinstance(exc, (ValueError, OSError, KeyError, FloatingPointError)):
            print(f"rank {dist.rank}: error: {exc}", file=sys.stderr)
        else:
            print(f"rank {dist.rank}:", file=sys.stderr)
            traceback.print_exc()
        sys.stderr.flush()
        dist.abort(1)
        raise
