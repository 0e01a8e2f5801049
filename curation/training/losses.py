"""BLIP's three pre-training objectives (Li et al. 2022, arXiv 2201.12086, sec. 3.2): ITC,
ITM with hard negatives mined from the ITC similarities, and LM with label smoothing."""

import torch
import torch.nn.functional as F
from transformers import BlipForConditionalGeneration, BlipForImageTextRetrieval

from curation.config import TrainConfig
from curation.training.data import Batch
from curation.training.modeling import Job

OBJECTIVES = ("itc", "itm", "lm")


def itc_loss(
    image_feat: torch.Tensor,
    text_feat: torch.Tensor,
    positive: torch.Tensor,
    temperature: float | torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, similarities): InfoNCE image->text and text->image over the batch (sec. 3.2).

    image_feat, text_feat: (B, E) L2-normalised; pair i's image is row i. positive: (B, B)
    bool, symmetric, true on the diagonal. Every text of the same image is a positive (targets
    spread evenly over them, BLIP's retrieval `idx`), and so is the same text on another image
    ("untitled", "a red circle"): calling it a negative would contradict the other pair.
    """
    sim = image_feat @ text_feat.t() / temperature  # (B, B): image of pair i vs text j
    targets = positive.float() / positive.sum(dim=1, keepdim=True)
    loss_i2t = -(F.log_softmax(sim, dim=1) * targets).sum(dim=1).mean()
    loss_t2i = -(F.log_softmax(sim.t(), dim=1) * targets).sum(dim=1).mean()
    return (loss_i2t + loss_t2i) / 2, sim


def sigmoid_itc_loss(
    image_feat: torch.Tensor,
    text_feat: torch.Tensor,
    positive: torch.Tensor,
    temperature: torch.Tensor,
    bias: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, similarities): SigLIP's pairwise sigmoid loss (Zhai et al. 2023, arXiv 2303.15343,
    Algorithm 1): every (image, text) pair of the batch is a binary match / no match problem,
    logit = cosine / temperature + bias, summed over the B x B pairs and divided by B.

    Shapes as `itc_loss`; positives (the same image, or the same text) are labelled +1. No
    softmax over the batch, so no batch-wide normalisation: the loss does not need the other
    pairs to be negatives of each other, and the bias (SigLIP: init -10) absorbs the
    imbalance of B positives against B^2 - B negatives. The similarities returned are the
    cosines / temperature (what hard-negative mining draws from, as with `itc_loss`).
    """
    sim = image_feat @ text_feat.t() / temperature
    labels = positive.float() * 2 - 1
    loss = -F.logsigmoid(labels * (sim + bias)).sum() / len(sim)
    return loss, sim


def sample_negatives(
    sim: torch.Tensor, same: torch.Tensor, generator: torch.Generator, hard: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """(negative text per image, negative image per text), indices into the batch. (B,), (B,)

    BLIP (sec. 3.2, after ALBEF) draws each negative with probability softmax(ITC similarity)
    + 1e-4, so texts that look like matches but are not, the informative cases, come up most;
    `hard=False` draws uniformly. Positives (`same`, (B, B): the same image, or the same text)
    are never drawn; a row with nothing else falls back to any other pair.
    """
    with torch.no_grad():
        sim = sim.float()
        others = ~torch.eye(len(sim), dtype=torch.bool, device=sim.device)

        def draw(scores: torch.Tensor) -> torch.Tensor:
            weights = F.softmax(scores, dim=1) + 1e-4 if hard else torch.ones_like(scores)
            weights = weights.masked_fill(same, 0.0)
            weights = torch.where(weights.sum(dim=1, keepdim=True) > 0, weights, others.float())
            return torch.multinomial(weights, 1, generator=generator).squeeze(1)

        return draw(sim), draw(sim.t())


def itm_loss(
    filt: BlipForImageTextRetrieval,
    image_embeds: torch.Tensor,
    batch: Batch,
    neg_text: torch.Tensor,
    neg_image: torch.Tensor,
) -> torch.Tensor:
    """Match / no-match cross-entropy over B positives and 2B hard negatives (sec. 3.2, ITM),
    plus up to B compositional negatives and k web texts per image when the batch carries
    them."""
    b = len(batch.ids)
    embeds = torch.cat([image_embeds, image_embeds, image_embeds[neg_image]])  # (3B, 1+P, Dv)
    ids = torch.cat([batch.ids, batch.ids[neg_text], batch.ids])  # (3B, L)
    mask = torch.cat([batch.mask, batch.mask[neg_text], batch.mask])  # (3B, L)
    hidden = filt.text_encoder(
        input_ids=ids, attention_mask=mask, encoder_hidden_states=embeds
    ).last_hidden_state  # (3B, L, Dt): text cross-attending to the image
    logits = filt.itm_head(hidden[:, 0, :])  # (3B, 2): [no match, match]
    if batch.neg_ids is not None:  # + each image with its own text made false (NegCLIP)
        keep = batch.neg_valid  # (B,) whether a negative could be made from the text
        ids, mask = batch.neg_ids[keep], batch.neg_mask[keep]
        logits = torch.cat([logits, _negative_logits(filt, image_embeds[keep], ids, mask)])
    if batch.web_ids is not None:  # + each image with web texts of other images
        k = len(batch.web_ids) // b
        embeds = image_embeds.repeat_interleave(k, dim=0)  # (B * k, 1+P, Dv)
        logits = torch.cat([logits, _negative_logits(filt, embeds, batch.web_ids, batch.web_mask)])
    labels = torch.zeros(len(logits), dtype=torch.long, device=logits.device)
    labels[:b] = 1
    return F.cross_entropy(logits.float(), labels)


def _negative_logits(filt, image_embeds, ids, mask) -> torch.Tensor:
    """ITM logits (N, 2) of N images (N, 1+P, Dv) with N texts (N, L) known not to match."""
    if not len(ids):  # e.g. no text in the batch had a content word to change
        return image_embeds.new_zeros((0, 2))
    hidden = filt.text_encoder(
        input_ids=ids, attention_mask=mask, encoder_hidden_states=image_embeds
    ).last_hidden_state  # (N, L, Dt)
    return filt.itm_head(hidden[:, 0, :])


def lm_loss(
    captioner: BlipForConditionalGeneration,
    image_embeds: torch.Tensor,
    batch: Batch,
    label_smoothing: float,
) -> torch.Tensor:
    """Next-token cross-entropy of the image-grounded decoder, smoothed (sec. 3.2, LM)."""
    logits = captioner.text_decoder(
        input_ids=batch.lm_ids,
        attention_mask=batch.lm_mask,
        encoder_hidden_states=image_embeds,
        use_cache=False,
    ).logits  # (B, L', V)
    return F.cross_entropy(
        logits[:, :-1].flatten(0, 1).float(),  # (B * (L'-1), V): predictions for tokens 1..
        batch.lm_labels[:, 1:].flatten(),
        ignore_index=-100,
        label_smoothing=label_smoothing,
    )


def _itc_features(filt, image_embeds, batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Projected, normalised [CLS] features of the unimodal encoders. (B, E), (B, E)"""
    image_feat = F.normalize(filt.vision_proj(image_embeds[:, 0, :]), dim=-1)
    hidden = filt.text_encoder(
        input_ids=batch.ids, attention_mask=batch.mask
    ).last_hidden_state  # (B, L, Dt), text only: no cross-attention
    return image_feat, F.normalize(filt.text_proj(hidden[:, 0, :]), dim=-1)


def _image_embeds(job: Job, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
    """Vision encoder output per model, (B, 1+P, Dv); once for a module the models share."""
    out: dict[str, torch.Tensor] = {}
    done: dict[int, torch.Tensor] = {}
    for name, model in job.models.items():
        key = id(model.vision_model)
        if key not in done:
            done[key] = model.vision_model(pixel_values=pixels).last_hidden_state
        out[name] = done[key]
    return out


def compute_losses(
    job: Job, batch: Batch, cfg: TrainConfig, generator: torch.Generator
) -> dict[str, torch.Tensor]:
    """The job's objectives on one batch; BLIP sums them with equal weights."""
    embeds = _image_embeds(job, batch.pixels)
    losses = {}
    if "itc" in job.objectives or "itm" in job.objectives:
        filt = job.models["filter"]
        image_feat, text_feat = _itc_features(filt, embeds["filter"], batch)
        if cfg.contrastive_loss == "sigmoid":
            args = (batch.positive, job.temperature(), job.temperature.bias)
            itc, sim = sigmoid_itc_loss(image_feat, text_feat, *args)
        else:
            itc, sim = itc_loss(image_feat, text_feat, batch.positive, job.temperature())
        if "itc" in job.objectives:
            losses["itc"] = itc
        if "itm" in job.objectives:
            negs = sample_negatives(sim, batch.positive, generator, cfg.itm_hard_negatives)
            losses["itm"] = itm_loss(filt, embeds["filter"], batch, *negs)
    if "lm" in job.objectives:
        captioner = job.models["captioner"]
        losses["lm"] = lm_loss(captioner, embeds["captioner"], batch, cfg.label_smoothing)
    return losses
