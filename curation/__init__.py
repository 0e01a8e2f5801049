"""CapFilt data curation for vision-language pretraining: the library (no orchestration)."""
