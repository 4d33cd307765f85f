"""The import path upstream RF-DETR users know (``from rfdetr.detr import RFDETRBase``).

The wrappers live in :mod:`rfdetr.api`; this module only names them again.
"""

from rfdetr.api import RFDETR, RFDETRBase, RFDETRLarge, RFDETRMedium, RFDETRNano, RFDETRSmall

__all__ = ["RFDETR", "RFDETRNano", "RFDETRSmall", "RFDETRMedium", "RFDETRBase", "RFDETRLarge"]
