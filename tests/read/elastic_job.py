"""One rank of the elastic DDP test, launched by torchrun: part of an epoch through `dataset.loader()`, recorded.

    torchrun ... tests/read/elastic_job.py SHARDS OUT_DIR NAME [--workers N] [--stop-after K] [--save FILE]
                                            [--load FILE] [--epoch E] [--batch-size B]

Writes OUT_DIR/NAME{rank}.json: the rank and world size, the batches' (key, start) lists, len(loader) and the
loader's state_dict() right after set_epoch / load_state_dict (before iterating), and its state_dict() at the end.
--stop-after K stops after K batches; --save FILE then writes rank 0's loader.state_dict() to FILE (what a
checkpoint does); --load FILE loads that state first (every rank loads rank 0's), on whatever layout this job has.
"""

import argparse
import datetime
import json
import os

import torch.distributed as dist

from spgdataset import SpectrogramDataset


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("shards")
    parser.add_argument("out")
    parser.add_argument("name")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--stop-after", type=int)
    parser.add_argument("--save")
    parser.add_argument("--load")
    parser.add_argument("--epoch", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()

    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=120))  # a hung collective fails
    rank = dist.get_rank()
    dataset = SpectrogramDataset(args.shards, window_content_ratio=0, output_configuration={"masks": ["speech"]},
                                 batch_size=args.batch_size, num_workers=args.workers, seed=5)
    loader = dataset.loader()
    if args.load:
        with open(args.load) as f:
            loader.load_state_dict(json.load(f))
    else:
        loader.set_epoch(args.epoch)
    length, loaded = len(loader), loader.state_dict()
    batches = []
    for batch in loader:
        batches.append([[k, s] for k, s in zip(batch["key"], batch["start"].tolist())])
        if args.stop_after is not None and len(batches) == args.stop_after:
            break
    state = loader.state_dict()
    if args.save and rank == 0:
        with open(args.save, "w") as f:
            json.dump(state, f)
    dist.barrier()  # a rank that ran out of batches early would hang here, and the test would time out
    with open(os.path.join(args.out, f"{args.name}{rank}.json"), "w") as f:
        json.dump({"rank": rank, "world": dist.get_world_size(), "len": length, "loaded": loaded, "state": state,
                   "batches": batches}, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
