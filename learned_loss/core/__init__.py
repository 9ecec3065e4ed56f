"""The core: the sharded Transformer LM, its training state and step, the run shell
(resume, metrics, SIGTERM, checkpoints), sampling and evaluation, the pre-training
stage, and the small pieces every job shares (errors and the CLI shell, atomic files,
provenance, the store of finished results)."""
