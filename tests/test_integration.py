"""Our optimizers inside the training frameworks users drive them with: PyTorch Lightning, the Hugging
Face Transformers Trainer and FSDP2, each against the same run with torch.optim, bit for bit.

Lightning and Transformers take seconds to import, so each test imports them itself: a test
worker that never runs these tests never pays for them.
"""

from __future__ import annotations

import os

import pytest
import torch

import optimizers

from . import distributed
from .harness import assert_bitwise, weights

# Lightning: 16 examples in batches of 4, two batches per optimizer step: 2 steps an epoch.
LIGHTNING_STEPS = 6
# An epoch's end: mid-epoch, Lightning restarts a plain DataLoader's epoch from its first batch.
LIGHTNING_CHECKPOINT_STEP = 2


@pytest.fixture
def restore_process_settings():
    """Trainer(deterministic=True) switches torch to deterministic algorithms and sets environment
    variables for the whole process; later tests in the same worker must not run under them."""
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    environment = dict(os.environ)
    yield
    torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
    os.environ.clear()
    os.environ.update(environment)


def regression_network(seed=0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))


def lightning_fit(optimizer_class, save_to=None, resume_from=None) -> list[torch.Tensor]:
    """Fit a small regression module for LIGHTNING_STEPS with AdamW + OneCycleLR, gradient clipping
    and accumulation, saving a checkpoint to ``save_to`` at LIGHTNING_CHECKPOINT_STEP or resuming
    from ``resume_from``."""
    import lightning

    class Regression(lightning.LightningModule):
        def __init__(self):
            super().__init__()
            # Resumed, it starts from other weights: only the checkpoint's can make it end as the run did.
            self.network = regression_network(seed=0 if resume_from is None else 1)

        def training_step(self, batch, batch_index):
            inputs, targets = batch
            return torch.nn.functional.mse_loss(self.network(inputs), targets)

        def configure_optimizers(self):
            optimizer = optimizer_class(self.parameters(), lr=1e-2, weight_decay=0.1)
            scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.05, total_steps=LIGHTNING_STEPS)
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    class SaveAtCheckpointStep(lightning.Callback):
        """Saves where ModelCheckpoint(every_n_train_steps=...) does, after the step's batch.  Not
        after a fit stopped by max_steps at an epoch's end: resuming from there replays one batch as
        a phantom epoch (Lightning-AI/pytorch-lightning#19617, still so in 2.6.6)."""

        def on_train_batch_end(self, trainer, *args):
            if trainer.global_step == LIGHTNING_CHECKPOINT_STEP and not save_to.exists():
                trainer.save_checkpoint(save_to)

    generator = torch.Generator().manual_seed(1)
    inputs, targets = torch.randn(16, 6, generator=generator), torch.randn(16, 3, generator=generator)
    trainer = lightning.Trainer(
        max_steps=LIGHTNING_STEPS,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        deterministic=True,
        gradient_clip_val=0.5,
        accumulate_grad_batches=2,
        callbacks=[SaveAtCheckpointStep()] if save_to is not None else [],
    )
    module = Regression()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(inputs, targets), batch_size=4)
    trainer.fit(module, loader, ckpt_path=resume_from)
    assert trainer.global_step == LIGHTNING_STEPS
    return weights(module)


@pytest.mark.usefixtures("restore_process_settings")
@pytest.mark.filterwarnings("ignore:The 'train_dataloader' does not have many workers")
def test_lightning_fit_and_resume_across_implementations_match_torch_optim(tmp_path):
    """A Lightning fit, and a fit resumed from a checkpoint the other implementation saved."""
    uninterrupted = lightning_fit(torch.optim.AdamW, save_to=tmp_path / "torch.optim.ckpt")
    assert_bitwise(lightning_fit(optimizers.AdamW, save_to=tmp_path / "optimizers.ckpt"), uninterrupted)
    assert_bitwise(lightning_fit(optimizers.AdamW, resume_from=tmp_path / "torch.optim.ckpt"), uninterrupted)
    assert_bitwise(lightning_fit(torch.optim.AdamW, resume_from=tmp_path / "optimizers.ckpt"), uninterrupted)
    assert all(not torch.equal(a, b) for a, b in zip(uninterrupted, weights(regression_network())))  # it trained


class TokenSequences(torch.utils.data.Dataset):
    """Random token sequences, each its own language-modelling labels."""

    def __init__(self, count=8, length=16, vocabulary=64):
        generator = torch.Generator().manual_seed(2)
        self.tokens = torch.randint(vocabulary, (count, length), generator=generator)

    def __len__(self):
        return len(self.tokens)

    def __getitem__(self, index):
        return {"input_ids": self.tokens[index], "labels": self.tokens[index]}


TRANSFORMERS_STEPS = 6
TRANSFORMERS_CHECKPOINT_STEP = 3  # mid-epoch (two steps an epoch): the Trainer skips the batches seen


def tiny_gpt2(seed=0) -> torch.nn.Module:
    """A two-layer GPT-2 built from its config: nothing to download."""
    import transformers

    torch.manual_seed(seed)
    config = transformers.GPT2Config(
        n_layer=2, n_head=2, n_embd=32, vocab_size=64, n_positions=32, bos_token_id=0, eos_token_id=0
    )
    return transformers.GPT2LMHeadModel(config)


def transformers_train(optimizer_class, output_dir, resume_from=None) -> list[torch.Tensor]:
    """Train a tiny GPT-2 for TRANSFORMERS_STEPS with the Trainer (cosine schedule with warmup,
    gradient clipping, weight decay groups), saving a checkpoint at TRANSFORMERS_CHECKPOINT_STEP."""
    import transformers

    # Resumed, it starts from other weights: only the checkpoint's can make it end as the run did.
    model = tiny_gpt2(seed=0 if resume_from is None else 1)
    arguments = transformers.TrainingArguments(
        output_dir=str(output_dir),
        max_steps=TRANSFORMERS_STEPS,
        per_device_train_batch_size=4,
        save_steps=TRANSFORMERS_CHECKPOINT_STEP,
        report_to=[],
        use_cpu=True,
        seed=0,
        dataloader_num_workers=0,
        lr_scheduler_type="cosine",
        warmup_steps=2,
        weight_decay=0.01,
        disable_tqdm=True,
        logging_strategy="no",
    )
    trainer = transformers.Trainer(
        model=model,
        args=arguments,
        train_dataset=TokenSequences(),
        optimizer_cls_and_kwargs=(optimizer_class, {"lr": 3e-3, "betas": (0.9, 0.98)}),
    )
    trainer.train(resume_from_checkpoint=resume_from)
    assert trainer.state.global_step == TRANSFORMERS_STEPS
    return weights(model)


def test_transformers_trainer_and_resume_across_implementations_match_torch_optim(tmp_path, monkeypatch):
    """The Trainer with optimizer_cls_and_kwargs, and resume_from_checkpoint across implementations."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # should anything try to download, it fails
    uninterrupted = transformers_train(torch.optim.AdamW, tmp_path / "torch.optim")
    assert_bitwise(transformers_train(optimizers.AdamW, tmp_path / "optimizers"), uninterrupted)
    checkpoint = f"checkpoint-{TRANSFORMERS_CHECKPOINT_STEP}"
    resumed = transformers_train(optimizers.AdamW, tmp_path / "resumed", tmp_path / "torch.optim" / checkpoint)
    assert_bitwise(resumed, uninterrupted)
    resumed = transformers_train(torch.optim.AdamW, tmp_path / "resumed back", tmp_path / "optimizers" / checkpoint)
    assert_bitwise(resumed, uninterrupted)
    assert all(not torch.equal(a, b) for a, b in zip(uninterrupted, weights(tiny_gpt2())))  # it trained


def test_a_model_whose_parameters_are_bucket_views_saves_and_loads_with_save_pretrained(tmp_path, monkeypatch):
    """``bucket_view=True`` leaves every parameter a view into one storage (tied embeddings
    included); ``save_pretrained`` (safetensors) and ``from_pretrained`` give the same weights."""
    import transformers

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = tiny_gpt2()
    opt = optimizers.AdamW(model.parameters(), lr=1e-2, fused=True, bucket_view=True)
    tokens = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(0))
    for _ in range(2):
        opt.zero_grad()
        model(tokens, labels=tokens).loss.backward()
        opt.step()
    assert len({p.untyped_storage().data_ptr() for p in model.parameters()}) == 1
    model.save_pretrained(tmp_path)
    loaded = transformers.GPT2LMHeadModel.from_pretrained(tmp_path)
    assert_bitwise(weights(loaded), weights(model))
    assert not torch.equal(weights(model)[0], weights(tiny_gpt2())[0])  # it trained


def test_fully_sharded_data_parallel_trains_as_torch_optim_on_every_rank(tmp_path):
    """FSDP2 (fully_shard) over gloo: our Adam steps DTensor shards as torch.optim's does."""
    distributed.run_workers(distributed.fsdp_worker, tmp_path)
    reference = distributed.single_process_reference()
    ranks = [torch.load(tmp_path / f"fsdp-{rank}.pt", weights_only=True) for rank in range(distributed.WORLD_SIZE)]
    for foreach in (True, None):
        for rank in ranks:
            ours, theirs = rank[f"optimizers foreach={foreach}"], rank[f"torch.optim foreach={foreach}"]
            assert_bitwise(ours, theirs)
            assert_bitwise(ours, ranks[0][f"optimizers foreach={foreach}"])
            # Reduce-scattered half-batch gradients round differently from one full-batch gradient.
            for a, b in zip(ours, reference, strict=True):
                torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
