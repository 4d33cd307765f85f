"""Pre-flight checks before training (``validate_setup.py``, ``rfdetr validate``).

- :mod:`~rfdetr.validation.checks`: the Python environment and a dataset folder, as one report;
- :mod:`~rfdetr.validation.rules`: the rules a COCO-format document must pass, whichever format it came from;
- :mod:`~rfdetr.validation.yolo`: a YOLO folder's label lines, then the document they make.
"""

from rfdetr.validation.checks import (
    ANNOTATION_FILE,
    BOX_TOLERANCE,
    MAX_LISTED,
    OPTIONAL_MODULES,
    REQUIRED_MODULES,
    CheckResult,
    Level,
    Report,
    SplitSummary,
    check_dataset,
    check_environment,
    validate,
)

__all__ = ["ANNOTATION_FILE", "BOX_TOLERANCE", "MAX_LISTED", "OPTIONAL_MODULES", "REQUIRED_MODULES", "CheckResult",
           "Level", "Report", "SplitSummary", "check_dataset", "check_environment", "validate"]
