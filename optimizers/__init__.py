"""torch.optim-compatible optimizers whose update rules run on PyTorch tensors and JAX pytrees.

    import optimizers
    opt = optimizers.SGD(model.parameters(), lr=0.1, momentum=0.9)   # torch tensors
    opt = optimizers.SGD({"w": w, "b": b}, lr=0.1, momentum=0.9)      # a JAX pytree
"""

from .optimizer import Optimizer, required
from .sgd import SGD

__all__ = ["Optimizer", "SGD", "required"]
__version__ = "0.1.0"
