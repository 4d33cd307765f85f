"""Command-line front ends: each module's ``main(argv)`` is the body of a root script.

``training`` (``train_detector_stage1.py``, ``train_seg_stage2.py``, ``train_seg_single_stage.py``),
``surgery`` (``shrink_head.py``, ``strip_class_heads.py``) and ``validate`` (``validate_setup.py``);
``common`` holds the shared flags. Nothing here imports torch before the arguments are parsed, so
``--help`` stays fast.
"""
