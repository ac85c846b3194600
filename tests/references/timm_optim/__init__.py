"""timm 1.0.31's ``timm/optim/{lamb,lars,_helpers,_types}.py``, verbatim (Apache-2.0, LICENSE here).

timm itself cannot be a test dependency: it requires torchvision, whose registry build for this
torch is a CUDA build that fails to import.  These four files import only torch.
"""
