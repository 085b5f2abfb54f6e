"""The evaluation loop: every exit's top-1 accuracy, and what it holds while it reads the next batch."""

from __future__ import annotations

import weakref

import torch

from nfcompile.learning.evaluate import top1_accuracies, top1_hits


class CountingSource:
    """Ten samples whose fetch records how many earlier batches are still alive when it is called."""

    def __init__(self):
        self.labels = torch.arange(10) % 2
        self.batches: list[weakref.ref] = []
        self.alive_at_fetch: list[int] = []

    def __len__(self) -> int:
        return len(self.labels)

    def fetch(self, indices, generator, *, train):
        self.alive_at_fetch.append(sum(ref() is not None for ref in self.batches))
        y = self.labels[indices]
        x = torch.nn.functional.one_hot(y, 2).float()  # a perfect classifier's logits, as the input
        self.batches.append(weakref.ref(x))
        return x, y


def test_every_exit_is_scored_and_no_batch_is_held_while_the_next_is_fetched():
    source = CountingSource()
    accuracies = top1_accuracies(lambda x: (x * 2, -x), source, batch_size=3)
    assert accuracies == [1.0, 0.0]
    # A batch held through the next fetch adds its size to the evaluation's peak, which the plan
    # does not count (training releases its batch the same way).
    assert source.alive_at_fetch == [0, 0, 0, 0]


def test_hits_say_which_samples_each_exit_gets_right_and_hold_no_batch_either():
    source = CountingSource()
    # The first output is right everywhere; the second only where the label is 0 (its logits favour 0).
    hits = top1_hits(lambda x: (x, torch.zeros_like(x) + torch.tensor([1.0, 0.0])), source, batch_size=4)
    assert hits.dtype == torch.bool and hits.shape == (2, 10)
    assert hits[0].all() and hits[1].tolist() == (source.labels == 0).tolist()
    assert source.alive_at_fetch == [0, 0, 0]
