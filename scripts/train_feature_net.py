"""Train the small CNN shipped as sdtgen's built-in feature network (sdtgen/assets/feature_net).

It classifies the 1x32x32 animal silhouettes into the 10 classes; its penultimate layer
is the feature space of FID/KID/precision-recall on the built-in dataset, its logits give
the Inception Score. Training uses the animals TRAIN split only, with random shifts of up
to 2 px and horizontal flips, AdamW and a one-cycle learning rate, on the CPU; a seed fixes
the result. The script reports the accuracy on the TEST split and writes the weights
(safetensors + config.json) plus ``training_report.json`` to ``--out``.

    python scripts/train_feature_net.py --out sdtgen/assets/feature_net
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from sdtgen.data.animals import ANIMAL_CLASSES, load_animals
from sdtgen.evaluation.feature_net import AnimalsFeatureNet, uint8_to_unit_range, weights_sha256

MAX_SHIFT = 2


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the network")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    return parser.parse_args(argv)


def augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Shift each image by up to MAX_SHIFT px (zero fill) and flip half of them."""
    n, size = images.shape[0], images.shape[-1]
    padded = F.pad(images, (MAX_SHIFT,) * 4, value=-1.0)  # -1 is the black background
    offsets = torch.randint(0, 2 * MAX_SHIFT + 1, (n, 2), generator=generator)
    shifted = torch.stack([padded[i, :, y : y + size, x : x + size] for i, (y, x) in enumerate(offsets.tolist())])
    flip = torch.rand(n, generator=generator) < 0.5
    return torch.where(flip[:, None, None, None], shifted.flip(-1), shifted)


def train(net: AnimalsFeatureNet, images: torch.Tensor, labels: torch.Tensor, args: argparse.Namespace) -> float:
    """Optimise ``net`` on ``images`` (N, 1, 32, 32) in [-1, 1]; return the last epoch's mean loss."""
    generator = torch.Generator().manual_seed(args.seed)
    steps_per_epoch = len(images) // args.batch_size
    optimizer = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=args.lr, total_steps=args.epochs * steps_per_epoch)
    net.train()
    epoch_loss = float("nan")
    with tqdm(total=args.epochs * steps_per_epoch, desc="feature net", unit="step") as bar:
        for epoch in range(args.epochs):
            order = torch.randperm(len(images), generator=generator)
            total = 0.0
            for step in range(steps_per_epoch):
                batch = order[step * args.batch_size : (step + 1) * args.batch_size]
                _, logits = net(augment(images[batch], generator))
                loss = F.cross_entropy(logits, labels[batch])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                total += loss.item()
                bar.update()
                bar.set_postfix(epoch=epoch, loss=f"{loss.item():.3f}")
            epoch_loss = total / steps_per_epoch
    net.eval()
    return epoch_loss


@torch.no_grad()
def accuracy(net: AnimalsFeatureNet, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of ``images`` (float, [-1, 1]) whose argmax logit equals the label."""
    _, logits = net(images)
    return (logits.argmax(dim=1) == labels).float().mean().item()


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)  # initial weights
    train_images, train_labels = load_animals("train")
    test_images, test_labels = load_animals("test")
    net = AnimalsFeatureNet(num_classes=len(ANIMAL_CLASSES))

    start = time.perf_counter()
    final_loss = train(net, uint8_to_unit_range(train_images), train_labels, args)
    seconds = time.perf_counter() - start
    test_accuracy = accuracy(net, uint8_to_unit_range(test_images), test_labels)

    net.save_pretrained(args.out)
    report = {
        "test_accuracy": round(test_accuracy, 4),
        "train_accuracy": round(accuracy(net, uint8_to_unit_range(train_images), train_labels), 4),
        "final_loss": round(final_loss, 5),
        "train_seconds": round(seconds, 1),
        "num_parameters": sum(p.numel() for p in net.parameters()),
        "weights_sha256": weights_sha256(args.out),
        "args": {key: str(value) for key, value in vars(args).items()},
    }
    (args.out / "training_report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
