"""Voice activity detection with DDP on spgdataset windows: a small CNN predicts the speech mask per frame.

    torchrun --nproc_per_node 2 tools/train_example.py --epochs 3            # CPU (gloo) or GPU (nccl)
    torchrun --nnodes 2 --node_rank 0 --master_addr HOST ... tools/train_example.py
    python tools/train_example.py                                             # one process

The corpus is generated (speech-like voiced segments and noise bursts with known intervals) and sharded
on first use by rank 0. Files are split 90/10 by path hash; the held-out 10% are evaluated in a fixed order,
each rank scoring its equal share. Prints per epoch: training loss, held-out frame accuracy, and the
majority-class rate that accuracy must beat.
"""

from __future__ import annotations

import argparse
import os
import time

import torch
import torch.distributed as dist
from torch import nn

from spgdataset import SpectrogramDataset, write_shards
from spgdataset.demo import make_corpus


class FrameClassifier(nn.Module):
    """Convolutions over time with the mel bins as channels: one speech logit per frame."""

    def __init__(self, n_mels: int, width: int = 64) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv1d(n_mels, width, 5, padding=2), nn.BatchNorm1d(width), nn.ReLU(),
            nn.Conv1d(width, width, 5, padding=4, dilation=2), nn.BatchNorm1d(width), nn.ReLU(),
            nn.Conv1d(width, width, 5, padding=8, dilation=4), nn.BatchNorm1d(width), nn.ReLU(),
            nn.Conv1d(width, 1, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(1)


def prepare_corpus(root: str, minutes: float) -> str:
    shards = os.path.join(root, "shards")
    if not os.path.exists(os.path.join(shards, "manifest.json")):
        audio = os.path.join(root, "audio")
        metadata = make_corpus(audio, minutes * 60, seed=7)
        write_shards(audio, metadata, shards, max_shard_files=8, progress=False)
    return shards


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="train_example_data", help="corpus folder (generated if missing)")
    parser.add_argument("--minutes", type=float, default=20.0)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=1, help="DataLoader workers per rank")
    parser.add_argument("--lr", type=float, default=3e-3)
    args = parser.parse_args()

    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    cuda = torch.cuda.is_available()
    if distributed:
        dist.init_process_group("nccl" if cuda else "gloo")
    rank = dist.get_rank() if distributed else 0
    device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if cuda else "cpu")
    if cuda:
        torch.cuda.set_device(device)

    if rank == 0:
        shards = prepare_corpus(args.data, args.minutes)
    if distributed:
        dist.barrier()
    shards = os.path.join(args.data, "shards")

    outputs = {"masks": ["speech"], "spectrogram": True}
    train = SpectrogramDataset(shards, split=(0.9, 0.1), subset=0, window_content_ratio=0,
                               output_configuration=outputs, seed=1)
    held_out = SpectrogramDataset(shards, split=(0.9, 0.1), subset=1, window_content_ratio=0,
                                  output_configuration=outputs, shuffle=False)
    train_loader = train.loader(batch_size=args.batch_size, num_workers=args.workers)
    eval_loader = held_out.loader(batch_size=256, num_workers=0)

    model = FrameClassifier(train.n_mels).to(device)
    if distributed:
        model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if cuda else None)
    optimiser = torch.optim.AdamW(model.parameters(), lr=args.lr)
    loss_fn = nn.BCEWithLogitsLoss()
    if rank == 0:
        print(f"train: {train.num_windows()} windows, held out: {held_out.num_windows()} windows, "
              f"{len(train_loader)} batches per rank per epoch, world size {dist.get_world_size() if distributed else 1}")

    for epoch in range(args.epochs):
        train_loader.set_epoch(epoch)
        model.train()
        started, total_loss, steps = time.perf_counter(), torch.zeros(2, device=device), 0
        for batch in train_loader:
            x = batch["spectrogram"].to(device, non_blocking=True)
            y = batch["masks"]["speech"].to(device, non_blocking=True).float()
            loss = loss_fn(model(x), y)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            total_loss += torch.stack([loss.detach() * len(y), torch.tensor(float(len(y)), device=device)])
            steps += 1

        model.eval()
        counts = torch.zeros(3, device=device)  # correct frames, speech frames, all frames
        with torch.no_grad():
            for batch in eval_loader:
                x = batch["spectrogram"].to(device)
                y = batch["masks"]["speech"].to(device)
                predicted = model(x) > 0
                counts += torch.stack([(predicted == y).sum().float(), y.sum().float(),
                                       torch.tensor(float(y.numel()), device=device)])
        if distributed:
            dist.all_reduce(total_loss)
            dist.all_reduce(counts)
        if rank == 0:
            accuracy = (counts[0] / counts[2]).item()
            speech = (counts[1] / counts[2]).item()
            print(f"epoch {epoch}: loss {(total_loss[0] / total_loss[1]).item():.4f}, {steps} steps/rank in "
                  f"{time.perf_counter() - started:.1f} s; held-out frame accuracy {accuracy:.3f} "
                  f"(majority class rate {max(speech, 1 - speech):.3f})", flush=True)
    if distributed:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
