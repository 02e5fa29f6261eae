"""Short training loop for methods that train (evidential heads, shallow ensembles, GP/LNK).

Adam, plateau learning-rate decay, selection of the best state on a validation loss,
progress bar; the data order of each epoch is a function of (seed, epoch).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import torch
from tqdm.auto import tqdm

from incerta.data.graph import AtomicGraph, batches
from incerta.data.splits import epoch_order

LossFn = Callable[[AtomicGraph], torch.Tensor]


def train_module(
    module: torch.nn.Module,
    loss_fn: LossFn,
    train: Sequence[AtomicGraph],
    validation: Sequence[AtomicGraph],
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int,
    progress: bool = True,
    description: str = "fitting",
) -> dict:
    """Minimise ``loss_fn`` over ``train``; keep the state with the lowest validation loss."""
    parameters = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(parameters, lr=lr)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.5, patience=3)
    best_loss, best_state, history = float("inf"), copy.deepcopy(module.state_dict()), []
    bar = tqdm(range(epochs), desc=description, disable=not progress, unit="epoch", mininterval=1.0)
    for epoch in bar:
        module.train()
        for batch in batches(train, batch_size, epoch_order(len(train), seed, epoch)):
            loss = loss_fn(batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(parameters, 10.0)
            optimizer.step()
        module.eval()
        total, count = 0.0, 0
        for batch in batches(validation, 16):
            total += float(loss_fn(batch).detach()) * batch.num_graphs
            count += batch.num_graphs
        val_loss = total / max(count, 1)
        scheduler.step(val_loss)
        history.append(val_loss)
        if val_loss < best_loss:
            best_loss, best_state = val_loss, copy.deepcopy(module.state_dict())
        bar.set_postfix(val_loss=f"{val_loss:.4g}")
    module.load_state_dict(best_state)
    module.eval()
    return {"epochs": epochs, "best_validation_loss": best_loss, "validation_loss": history}
