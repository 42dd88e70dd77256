"""Which class images go with which instance batch (DreamBooth prior preservation).

Pairing follows the diffusers DreamBooth scripts: every batch of N instance samples is
extended by N class samples, concatenated *after* them in one batch, so the loss is
`mse(instance rows) + prior_loss_weight * mse(class rows)` and the step count is unchanged.
(kohya instead adds reg images to the epoch as extra samples, which doubles the steps.)

The class samples form one endless stream: round r is a permutation of all class samples
(each image `repeats` times, for kohya reg folders) seeded by (seed, r), and the batch that
starts at sample position p of epoch e takes stream positions
`e * samples_per_epoch + p ...`. So the choice is a pure function of (seed, epoch, batch
position) — identical after a resume — and every class image is used equally often over a
run, even when there are more class images than instance samples per epoch. (diffusers
lengthens the epoch to `max(num_class_images, num_instance_images)` in that case; we keep
steps driven by instance samples, as the step arithmetic and the user's budget assume.)
"""

from __future__ import annotations

import random

from lorakiln.data.dataset import Dataset, ImageItem
from lorakiln.data.seeding import derive_seed


class ClassSampler:
    """Hands out class samples from the seeded stream described in the module docstring."""

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset = dataset
        self.items: list[ImageItem] = dataset.items
        #: Index into `items` for every class sample of one round (repeats expanded).
        self.pool: list[int] = [i for i, item in enumerate(self.items) for _ in range(dataset.repeats_of(item))]
        if not self.pool:
            raise ValueError("prior preservation needs at least one class image")
        self.seed = seed
        self._orders: dict[int, list[int]] = {}

    def _order(self, round_index: int) -> list[int]:
        order = self._orders.get(round_index)
        if order is None:
            order = list(range(len(self.pool)))
            random.Random(derive_seed(self.seed, "class-order", round_index)).shuffle(order)
            if len(self._orders) > 4:  # only the current and next round are ever in use
                self._orders.clear()
            self._orders[round_index] = order
        return order

    def take(self, position: int, count: int) -> list[ImageItem]:
        """`count` class samples starting at stream `position` (wrapping into the next round)."""
        size = len(self.pool)
        return [self.items[self.pool[self._order(p // size)[p % size]]] for p in range(position, position + count)]
