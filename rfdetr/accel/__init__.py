"""CPU speed paths, kept apart from the model code: ``accelerate(model, device, dtype)``.

:mod:`rfdetr.models` is plain PyTorch (``nn.Linear``, ``F.scaled_dot_product_attention``, the residual
stream in its input's dtype). :func:`~rfdetr.accel.apply.accelerate` switches a built model's modules to
subclasses that share its parameters and run faster on a CPU: the linear layers on the kernel that
suits the CPU (:mod:`rfdetr.accel.kernels`, :mod:`rfdetr.accel.linear`) and, for bf16, the ViT and the
attention variants of :mod:`rfdetr.accel.bf16`. The model loaders call it; a model built with
:func:`rfdetr.models.build_detector` alone is the plain one. Figures: docs/benchmarks.md.
"""

from rfdetr.accel.apply import accelerate

__all__ = ["accelerate"]
