"""RT-DETR-Seg: RF-DETR detection and two-stage instance segmentation.

The model wrappers are imported lazily so that ``import rfdetr`` (and the scripts' ``--help``)
stay fast and free of side effects.
"""

__version__ = "0.1.0"

_WRAPPERS = ("RFDETR", "RFDETRNano", "RFDETRSmall", "RFDETRMedium", "RFDETRBase", "RFDETRLarge", "RFDETRSegPreview",
             "RFDETRSegNano", "RFDETRSegSmall", "RFDETRSegMedium", "RFDETRSegLarge", "RFDETRSegXLarge",
             "RFDETRSeg2XLarge")
__all__ = list(_WRAPPERS)


def __getattr__(name: str):
    if name in _WRAPPERS:
        from rfdetr import api

        return getattr(api, name)
    raise AttributeError(f"module 'rfdetr' has no attribute {name!r}")
