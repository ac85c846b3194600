"""torch.optim-compatible optimizers whose update rules run on PyTorch tensors and JAX pytrees.

import optimizers
opt = optimizers.Adam(model.parameters(), lr=1e-3)           # torch tensors
opt = optimizers.Adam({"w": w, "b": b}, lr=1e-3)              # a JAX pytree
init, update, _ = opt.functional()                            # pure functions for jax.jit
tx = optimizers.as_optax(opt)                                 # an optax.GradientTransformation
flat, unravel = optimizers.ravel(params)                      # JAX leaves as one vector per dtype
"""

from collections.abc import Callable
from typing import Any

from .adafactor import Adafactor
from .adagrad import Adadelta, Adagrad, RMSprop
from .adam import Adam, Adamax, AdamW, NAdam, RAdam
from .adan import Adan
from .ademamix import AdEMAMix
from .lamb import Lamb
from .lars import Lars
from .lbfgs import LBFGS
from .lion import Lion
from .muon import Muon
from .optax_adapter import as_optax
from .optimizer import Optimizer, required
from .prodigy import Prodigy
from .rprop import Rprop
from .schedule_free import ScheduleFreeAdamW, ScheduleFreeSGD
from .sgd import ASGD, SGD
from .soap import SOAP
from .sparse_adam import SparseAdam

__all__ = [
    "ASGD",
    "Adadelta",
    "Adafactor",
    "Adagrad",
    "Adam",
    "Adamax",
    "AdEMAMix",
    "Adan",
    "AdamW",
    "LBFGS",
    "Lamb",
    "Lars",
    "Lion",
    "Muon",
    "NAdam",
    "Optimizer",
    "Prodigy",
    "RAdam",
    "RMSprop",
    "Rprop",
    "SGD",
    "SOAP",
    "ScheduleFreeAdamW",
    "ScheduleFreeSGD",
    "SparseAdam",
    "as_optax",
    "ravel",
    "required",
]
__version__ = "0.1.0"


def ravel(params: Any) -> tuple[dict, Callable[[Any], Any]]:
    """A JAX pytree as one flat vector per dtype (``{"float32": vector, ...}``, leaves in order),
    and the jittable function that gives the pytree back.

    An optimizer built on the vectors steps a few long loops per step instead of one short one
    per leaf; take gradients through ``unravel`` and they come flat.  Its state is then one
    entry per vector, not per parameter (a checkpoint of it is not torch.optim's per-parameter
    layout of the model).
    """
    from backends.jax_functional import ravel as ravel_pytree  # JAX only when asked for

    return ravel_pytree(params)
