"""The bootstrap loop's training side: pre-training, fine-tuning, image-encoder
pre-training, evaluation, metrics, the loop's bookkeeping and the data ablation."""
