"""DFN-style scoring: the cosine similarity of an image and its caption under a contrastive model.

Data Filtering Networks (Fang et al. 2023, arXiv 2309.17425) score every pair of a pool with a
CLIP-style model trained on high-quality data and keep the top fraction (DFN kept 15%; DataComp's
CLIP-score baseline, Gadre et al. 2023, keeps the top 30% by OpenAI ViT-L/14 score). Their
finding is that a filter's quality comes from its training data, not from its own benchmark
accuracy: the scorer to use is one trained on clean data, like the BLIP model our retraining
writes.

Two kinds of checkpoint load here, told apart by the folder's ``config.json`` (``model_type``):
- ``clip``: a Hugging Face ``CLIPModel`` + ``CLIPProcessor`` (e.g.
  ``openai/clip-vit-large-patch14``, DataComp's baseline scorer); the score is the cosine of
  the projected image and text embeddings (``CLIPModel.forward``'s ``logits_per_image`` before
  the temperature).
- ``siglip``: a ``SiglipModel`` + ``SiglipProcessor`` (Zhai et al. 2023, arXiv 2303.15343, e.g.
  ``google/siglip-base-patch16-224``); the score is the cosine of its pooled embeddings, texts
  padded to the model's length as SigLIP was trained (its sigmoid probability is a monotone
  function of the cosine, so the kept top fraction is the same).
- ``blip`` with ``BlipForImageTextRetrieval``: the retrieval model our BLIP training writes; the
  score is the cosine of its ITC embeddings (``forward(use_itm_head=False)``), BLIP's own
  contrastive similarity, not the ITM head.

Loading follows ``curation.models.blip``: ``from_pretrained`` with safetensors only and no remote
code,
a hub id (offline: from the local Hugging Face cache) or a ``save_pretrained`` folder, and the
same one-line ``ModelSourceError`` for a source that cannot load.
"""

from dataclasses import dataclass

import torch
from PIL import Image
from torch.nn.functional import normalize
from transformers import AutoConfig, CLIPModel, CLIPProcessor, SiglipModel, SiglipProcessor
from transformers.utils import logging as transformers_logging

from curation.models import blip as models

BLIP_ITC_MAX_TOKENS = 35  # BLIP truncates texts to 35 tokens in its ITC/ITM code
DEFAULT_BATCH_SIZE = 64  # pairs per forward pass


@dataclass
class Scorer(models.OnDevice):
    """A contrastive image-text model in eval mode: one cosine similarity per (image, text) pair.

    Subclasses give the normalised image and text embeddings; ``score`` pairs them up.
    """

    model: torch.nn.Module
    processor: object  # CLIPProcessor | BlipProcessor: an image processor and a tokenizer
    max_text_tokens: int  # texts are truncated to this many tokens (with the special ones)

    @property
    def image_size(self) -> int:
        """Side of the square model input, in pixels."""
        return self.model.config.vision_config.image_size

    def preprocess(self, pil_images: list[Image.Image]) -> torch.Tensor:
        """RGB PIL images -> pixel_values (N, 3, H, W) float32 on CPU; safe on worker threads."""
        if not pil_images:
            return torch.empty(0, 3, self.image_size, self.image_size)
        pixels = self.processor.image_processor(images=pil_images, return_tensors="pt")
        return pixels["pixel_values"].float()

    def score(
        self,
        images: list[Image.Image] | torch.Tensor,
        texts: list[str | None],
        batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> list[float]:
        """Cosine similarity of ``images[i]`` and ``texts[i]``, in [-1, 1], one per pair.

        ``images``: PIL images or pixel_values (N, 3, H, W) from ``preprocess``. Pairs go
        ``batch_size`` at a time; each image runs through the vision tower once. A None text
        is scored as the empty string.
        """
        if len(images) != len(texts):
            raise ValueError(f"{len(images)} images but {len(texts)} texts: one text per image")
        if not isinstance(images, torch.Tensor):
            images = self.preprocess(list(images))
        scores: list[float] = []
        for start in range(0, len(texts), batch_size):
            pixels = images[start : start + batch_size]
            chunk = [t or "" for t in texts[start : start + batch_size]]
            scores.extend(self._score_batch(pixels, chunk))
        return scores

    def embed_images(self, pixel_values: torch.Tensor) -> list[list[float]]:
        """Unit-norm image embeddings (N, E) as lists of floats: SemDeDup's input."""
        with torch.inference_mode():
            pixel_values = pixel_values.to(self.device, self.dtype, non_blocking=True)
            return self.image_embeds(pixel_values).float().tolist()

    def _score_batch(self, pixel_values: torch.Tensor, texts: list[str]) -> list[float]:
        with torch.inference_mode():
            pixel_values = pixel_values.to(self.device, self.dtype, non_blocking=True)
            image = self.image_embeds(pixel_values)  # (B, E), unit norm
            text = self.text_embeds(self.tokenize(texts))  # (B, E), unit norm
            cosine = (image * text).sum(dim=-1).float().clamp(-1.0, 1.0)
        return cosine.tolist()

    padding = "longest"  # how texts are padded (SigLIP: "max_length", as it was trained)
    text_inputs = ("input_ids", "attention_mask")  # what the text tower reads

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """Padded as ``padding`` says, truncated to ``max_text_tokens``, on the model's device."""
        tokens = self.processor.tokenizer(
            texts,
            padding=self.padding,
            truncation=True,
            max_length=self.max_text_tokens,
            return_tensors="pt",
        )
        return {k: tokens[k].to(self.device) for k in self.text_inputs}

    def image_embeds(self, pixel_values: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def text_embeds(self, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError


class ClipScorer(Scorer):
    """CLIP: cosine of the projected pooled embeddings, as ``CLIPModel.forward`` computes it."""

    def image_embeds(self, pixel_values: torch.Tensor) -> torch.Tensor:
        pooled = self.model.get_image_features(pixel_values=pixel_values).pooler_output
        return normalize(pooled, dim=-1)  # (B, projection_dim)

    def text_embeds(self, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        pooled = self.model.get_text_features(**tokens).pooler_output  # at the EOS token
        return normalize(pooled, dim=-1)  # (B, projection_dim)


class SiglipScorer(ClipScorer):
    """SigLIP: as CLIP (cosine of the pooled, projected embeddings), with texts padded to the
    full length: SigLIP's text tower was trained on max_length padding, not on masks."""

    padding = "max_length"
    text_inputs = ("input_ids",)


class BlipItcScorer(Scorer):
    """BLIP retrieval model, ITC: cosine of the projected unimodal [CLS] features
    (``BlipForImageTextRetrieval.forward(use_itm_head=False)``, pair by pair)."""

    def image_embeds(self, pixel_values: torch.Tensor) -> torch.Tensor:
        hidden = self.model.vision_model(pixel_values=pixel_values)[0]  # (B, 1 + patches, Dv)
        return normalize(self.model.vision_proj(hidden[:, 0, :]), dim=-1)  # (B, E)

    def text_embeds(self, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        hidden = self.model.text_encoder(**tokens).last_hidden_state  # (B, L, Dt), text only
        return normalize(self.model.text_proj(hidden[:, 0, :]), dim=-1)  # (B, E)


CONTRASTIVE = {"clip": (CLIPModel, CLIPProcessor, ClipScorer)}
CONTRASTIVE["siglip"] = (SiglipModel, SiglipProcessor, SiglipScorer)


def scorer_kind(id_or_dir: str) -> str:
    """``"clip"``, ``"siglip"`` or ``"blip_itc"`` from the checkpoint's config;
    ModelSourceError otherwise."""
    models.check_model_source(id_or_dir)
    config = AutoConfig.from_pretrained(models._resolve(id_or_dir))
    if config.model_type in CONTRASTIVE:
        return config.model_type
    if config.model_type == "blip":
        if "BlipForImageTextRetrieval" in (config.architectures or []):
            return "blip_itc"
        raise models.ModelSourceError(
            f"scorer {id_or_dir!r} is a BLIP {', '.join(config.architectures or ['model'])}, "
            "not a BlipForImageTextRetrieval (give the filter/retrieval checkpoint)"
        )
    raise models.ModelSourceError(
        f"scorer {id_or_dir!r} has model_type {config.model_type!r}; a scorer must be a CLIP "
        "or SigLIP model or a BLIP retrieval checkpoint"
    )


def load_scorer(id_or_dir: str, device: torch.device, dtype: torch.dtype) -> Scorer:
    """The DFN scorer from a hub id or a ``save_pretrained`` folder, in eval mode on device/dtype.

    CLIP / SigLIP: ``CLIPModel`` + ``CLIPProcessor`` (``SiglipModel`` + ``SiglipProcessor``),
    texts truncated at the model's position limit (77 for OpenAI's CLIP, 64 for SigLIP). BLIP
    retrieval: loaded as ``curation.models.blip.load_filter`` does, texts truncated at 35 tokens
    as in BLIP's ITC code.
    """
    kind = scorer_kind(id_or_dir)
    if kind == "blip_itc":
        return itc_scorer(models.load_filter(id_or_dir, device, dtype))
    model_class, processor_class, scorer_class = CONTRASTIVE[kind]
    source = models._resolve(id_or_dir)
    transformers_logging.disable_progress_bar()
    model = model_class.from_pretrained(source, use_safetensors=True, dtype=dtype)
    model = model.to(device=device, dtype=dtype).eval()
    processor = processor_class.from_pretrained(source)
    return scorer_class(model, processor, model.config.text_config.max_position_embeddings)


@dataclass
class ContrastiveFilter:
    """A CLIP or SigLIP model as CapFilt's filter, in place of BLIP's ITM head.

    Per (image, text) pair it gives a match score where BLIP gives the ITM probability, judged
    against `[capfilt] itm_threshold`: SigLIP's own probability, sigmoid(cosine *
    exp(logit_scale) + logit_bias) (arXiv 2303.15343), so a threshold means what BLIP's does;
    CLIP's cosine, with a threshold of its own (LAION-400M kept CLIP ViT-B/32 cosines >= 0.3).
    The cosine is also its ITC value. `family` ("clip" | "siglip") is what judged the texts.
    """

    scorer: Scorer
    family: str

    @property
    def processor(self):
        return self.scorer.processor

    def score(
        self, pixel_values: torch.Tensor, texts: list[list[str]]
    ) -> tuple[list[list[float]], list[list[float]]]:
        """As `curation.models.blip.Filter.score`: for image i and each text in texts[i],
        (match scores, cosines); each image and each text runs through its tower once. Texts
        are truncated at the model's own length."""
        counts = [len(t) for t in texts]
        flat = [
            t[: models.readable_chars(self.scorer.max_text_tokens)] for per in texts for t in per
        ]
        if not flat:
            return [[] for _ in texts], [[] for _ in texts]
        owner = torch.repeat_interleave(torch.arange(len(texts)), torch.tensor(counts))
        with torch.inference_mode():
            pixels = pixel_values.to(self.scorer.device, self.scorer.dtype, non_blocking=True)
            image = self.scorer.image_embeds(pixels)  # (B, E), unit norm
            text = self.scorer.text_embeds(self.scorer.tokenize(flat))  # (T, E), unit norm
            cosine = (image[owner.to(image.device)] * text).sum(dim=-1).float()
            match = cosine
            if self.family == "siglip":
                model = self.scorer.model
                match = torch.sigmoid(cosine * model.logit_scale.exp() + model.logit_bias)
        return models._split(match.tolist(), counts), models._split(cosine.tolist(), counts)


def load_filter(id_or_dir: str, device: torch.device, dtype: torch.dtype):
    """CapFilt's filter by the checkpoint's model_type: BLIP retrieval (ITM; `curation.models.
    blip.Filter`), or a CLIP / SigLIP model (`ContrastiveFilter`). ModelSourceError otherwise."""
    kind = scorer_kind(id_or_dir)
    if kind == "blip_itc":
        return models.load_filter(id_or_dir, device, dtype)
    return ContrastiveFilter(load_scorer(id_or_dir, device, dtype), kind)


def itc_scorer(filt) -> Scorer:
    """A CapFilt filter's contrastive half as a Scorer, sharing its weights: BLIP's ITC
    (texts cut at 35 tokens, as BLIP's code does), or the CLIP / SigLIP model itself."""
    if isinstance(filt, ContrastiveFilter):
        return filt.scorer
    return BlipItcScorer(filt.model, filt.processor, BLIP_ITC_MAX_TOKENS)
