"""Run under ``mpiexec`` by tests/test_distributed.py (or directly, as one process).

    python mpi_worker.py MODE OUT_DIR

MODE "lm" / "classifier": k data-parallel training steps through fastlstm.training's
pieces and fastlstm.distributed, each rank writing its final weights to
OUT_DIR/rank{r}.npz. With one process, the global batch is the per-rank batch times
``--ranks-emulated`` (so it equals the N-rank job's). MODE "die": rank 1 exits abruptly
in the middle of training; MODE "raise": rank 1 raises; the job must end, not hang.
"""
import os
import sys

import numpy as np

from fastlstm import distributed, optim, training
from fastlstm.models import CharLM, SentimentClassifier
from fastlstm.nn.utils import clip_grad_norm_

STEPS = 6
B = 3             # per rank (an odd number, so shards are not trivially aligned)


def lm_job(dist, n_ranks):
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 11, 3000)
    # rank 1 initialises differently: the broadcast from rank 0 must fix it
    model = CharLM(11, 10, embedding_dim=4, seed=dist.rank, num_threads=1)
    dist.broadcast_parameters(model)
    opt = optim.Adam(model.parameters(), lr=0.01)
    # n_ranks streams of B per rank: one process emulates them with a batch n_ranks * B
    per_rank = B * n_ranks // dist.size
    batches = training.lm_epoch_batches(ids, 7, per_rank, dist)(0, 0)
    step = training.lm_grad_step(model, dist.size)
    return model, opt, batches, step


def classifier_job(dist, n_ranks):
    rng = np.random.default_rng(1)
    seqs = [rng.integers(1, 20, int(rng.integers(1, 9))) for _ in range(25)]
    labels = rng.integers(0, 2, 25)
    model = SentimentClassifier(20, 5, 6, pooling="mean", seed=dist.rank, num_threads=1)
    dist.broadcast_parameters(model)
    opt = optim.Adam(model.parameters(), lr=0.01)
    per_rank = B * n_ranks // dist.size
    # 25 reviews in global batches of 6: the last holds one, so a rank gets none
    batches = training.classifier_epoch_batches(seqs, labels, per_rank, seed=0,
                                                dist=dist)(0, 0)
    step = training.classifier_grad_step(model)
    return model, opt, batches, step


def train(mode, out_dir, n_ranks):
    dist = distributed.context()
    model, opt, batches, grad_step = (lm_job if mode == "lm" else classifier_job)(
        dist, n_ranks)
    params = model.parameters()
    losses = []
    for k, batch in enumerate(batches):
        if k == STEPS:
            break
        loss, tokens, weight = grad_step(batch)
        loss, stop, tokens = dist.average_gradients(params, weight, loss, False, tokens)
        clip_grad_norm_(params, 1.0)
        opt.step()
        losses.append(loss)
    np.savez(os.path.join(out_dir, f"rank{dist.rank}.npz"), losses=np.array(losses),
             **{k: v for k, v in model.state_dict().items()})


def doomed(mode):
    dist = distributed.context()
    model = CharLM(11, 8, num_threads=1)
    params = model.parameters()
    for step in range(1000):
        if dist.rank == 1 and step == 3:
            if mode == "die":
                os._exit(3)
            raise ValueError("rank 1 fails on purpose")
        model.zero_grad()
        dist.average_gradients(params, 0.5, 0.0, False)


if __name__ == "__main__":
    mode, out_dir = sys.argv[1], sys.argv[2]
    n_ranks = int(sys.argv[3]) if len(sys.argv) > 3 else distributed.context().size
    if mode in ("die", "raise"):
        distributed.run_or_abort(doomed, mode)
    else:
        distributed.run_or_abort(train, mode, out_dir, n_ranks)
