"""The import path upstream RF-DETR users know (``from rfdetr.detr import RFDETRBase``).

The wrappers live in :mod:`rfdetr.api`; this module only names them again.
"""

from rfdetr.api import (
                        RFDETR,
                        RFDETRBase,
                        RFDETRLarge,
                        RFDETRMedium,
                        RFDETRNano,
                        RFDETRSeg2XLarge,
                        RFDETRSegLarge,
                        RFDETRSegMedium,
                        RFDETRSegNano,
                        RFDETRSegPreview,
                        RFDETRSegSmall,
                        RFDETRSegXLarge,
                        RFDETRSmall,
)

__all__ = ["RFDETR", "RFDETRNano", "RFDETRSmall", "RFDETRMedium", "RFDETRBase", "RFDETRLarge", "RFDETRSegPreview",
           "RFDETRSegNano", "RFDETRSegSmall", "RFDETRSegMedium", "RFDETRSegLarge", "RFDETRSegXLarge",
           "RFDETRSeg2XLarge"]
