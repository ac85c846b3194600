"""torch.optim-compatible optimizers whose update rules run on PyTorch tensors and JAX pytrees.

import optimizers
opt = optimizers.Adam(model.parameters(), lr=1e-3)           # torch tensors
opt = optimizers.Adam({"w": w, "b": b}, lr=1e-3)              # a JAX pytree
init, update, _ = opt.functional()                            # pure functions for jax.jit
tx = optimizers.as_optax(opt)                                 # an optax.GradientTransformation
"""

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
    "required",
]
__version__ = "0.1.0"
