"""One rank of the DDP tests, launched by torchrun: iterate an epoch and record what this rank saw.

    torchrun ... tests/ddp_job.py SHARDS OUT_DIR [--stop-after N] [--resume] [--workers 2] [--epoch E]

Writes OUT_DIR/rank{r}.json with the batches' (key, start) lists, the batch count and len(loader);
with --stop-after N it stops after N batches and saves the loader's state_dict (what a checkpoint does);
with --resume it loads that state first and records the rest of the epoch.
"""

import argparse
import json
import os

import torch.distributed as dist

from spgdataset import SpectrogramDataset


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("shards")
    parser.add_argument("out")
    parser.add_argument("--stop-after", type=int)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--epoch", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    dataset = SpectrogramDataset(args.shards, window_content_ratio=0, output_configuration={"masks": ["speech"]},
                                 batch_size=args.batch_size, num_workers=args.workers, seed=5)
    loader = dataset.loader()
    state_path = os.path.join(args.out, f"state{rank}.json")
    if args.resume:
        with open(state_path) as f:
            loader.load_state_dict(json.load(f))
    else:
        loader.set_epoch(args.epoch)
    batches = []
    for batch in loader:
        batches.append([[k, s] for k, s in zip(batch["key"], batch["start"].tolist())])
        if args.stop_after is not None and len(batches) == args.stop_after:
            with open(state_path, "w") as f:
                json.dump(loader.state_dict(), f)
            break
    dist.barrier()  # a rank that ran out of batches early would hang here, and the test would time out
    name = "resumed" if args.resume else ("stopped" if args.stop_after else "full")
    with open(os.path.join(args.out, f"{name}{rank}.json"), "w") as f:
        json.dump({"rank": rank, "world": dist.get_world_size(), "len": len(loader), "batches": batches}, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
