"""Checkpoint files: reading and identifying them (``files``), atomic durable writing (``durable``),
pretrained-weight download (``download``), class-head surgery (``surgery``), files of upstream
releases (``upstream``) and the one place where a file becomes a model (``loading``)."""
