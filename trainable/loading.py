"""What a trial trains on: the training part of the cached arrays as a shuffled DataLoader,
augmented and normalised, each batch's augmentation seeded by the batch itself (the same
with or without workers, and after a resume), and the thread pools its workers inherit."""

from __future__ import annotations

import hashlib

import cv2
import numpy as np
import torch

from results.config import TrainConfig
from trainable.augment import build_augmentation, normalise
from trainable.preprocess import BusiArrays
from trainable.splits import Split


class SegmentationSet(torch.utils.data.Dataset):
    """Training items from the cached arrays: augmented, normalised, (1, S, S) float32."""

    def __init__(self, data: BusiArrays, indices: np.ndarray, config: TrainConfig) -> None:
        self.data, self.indices, self.seed = data, indices, config.seed
        self.augmentation = build_augmentation(config)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.__getitems__([i])[0]

    def __getitems__(self, batch: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        # Batched fetch: without augmentation one fancy-indexing copy serves the batch.
        rows = self.indices[batch]
        images, masks = self.data.images[rows], self.data.masks[rows]
        if self.augmentation is not None:
            # Seeded by the batch itself (the shuffled order differs every epoch): the same
            # augmentation whichever worker makes the batch, with or without workers, and
            # after a resume.
            self.augmentation.set_random_seed(batch_seed(self.seed, batch))
            pairs = [
                self.augmentation(image=im, mask=m) for im, m in zip(images, masks, strict=True)
            ]
            images = np.stack([p["image"] for p in pairs])
            masks = np.stack([p["mask"] for p in pairs])
        images = torch.from_numpy(normalise(images)).unsqueeze(1)
        masks = torch.from_numpy(masks.astype(np.float32)).unsqueeze(1)
        return list(zip(images, masks, strict=True))


def batch_seed(seed: int, batch: list[int]) -> int:
    digest = hashlib.blake2b(np.asarray([seed, *batch], dtype=np.int64).tobytes(), digest_size=8)
    return int.from_bytes(digest.digest(), "little") % 2**32


def limit_threads(threads: int) -> None:
    """Torch's and OpenCV's thread pools to `threads` in this process. Call it before the
    DataLoader starts its workers: they inherit OpenCV's setting (which ignores
    OMP_NUM_THREADS and would use every core of the node in every worker; changing it in
    a forked worker can deadlock), and torch gives each worker one thread itself."""
    torch.set_num_threads(threads)
    cv2.setNumThreads(threads)


def make_train_loader(
    data: BusiArrays, split: Split, config: TrainConfig, num_workers: int
) -> torch.utils.data.DataLoader:
    """The training part in a shuffled order that `loader.sampler.generator` alone decides
    (reseeded every epoch by the trainer): the DataLoader draws its workers' seeds from
    its own generator once per iterator, which persistent workers make once per trial."""
    dataset = SegmentationSet(data, split.train, config)
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=config.batch_size,
        sampler=torch.utils.data.RandomSampler(dataset, generator=torch.Generator()),
        # BatchNorm cannot train on a batch of one image: such a last batch is dropped
        # (a different image each epoch, as the order is shuffled).
        drop_last=len(split.train) % config.batch_size == 1,
        num_workers=num_workers,
        # Workers live as long as the loader (the trial), not one epoch.
        persistent_workers=num_workers > 0,
        pin_memory=torch.cuda.is_available(),
    )
