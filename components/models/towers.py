"""The three towers. Each maps its part of a batch to (B, out_dim); the only module that touches timm."""
from __future__ import annotations

import hashlib
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

RESNET_STAGES = ("layer1", "layer2", "layer3", "layer4")


class ImageTower(nn.Module):
    """timm backbone (num_classes=0) + projection. Owns its preprocessing (uint8 HWC in)."""

    def __init__(self, backbone: str, out_dim: int, dropout: float, pretrained_path: str = "",
                 low_res_stem: bool = False, channels: tuple[int, ...] = (), stem_width: int = 0) -> None:
        super().__init__()
        import timm

        kwargs = {}
        if pretrained_path and stem_width:
            raise ValueError("model.stem_width: a narrower stem would throw the pretrained stem away; "
                             "set stem_width: 0 with model.pretrained_path")
        if pretrained_path:
            if not Path(pretrained_path).is_file():
                raise FileNotFoundError(f"model.pretrained_path: {pretrained_path} does not exist; "
                                        "set it to a local .safetensors/.pth file or to \"\"")
            # Weights come from a local file only: nothing is downloaded at run time.
            kwargs = {"pretrained": True, "pretrained_cfg_overlay": {"file": str(pretrained_path)}}
        if channels:
            # A narrower ResNet: on 2 CPU cores from scratch, half the widths train ~2.5x faster per
            # epoch than resnet18 and reach a better accuracy in the same time.
            # (timm applies stem_width to deep stems only; `stem_width` below narrows a plain 7x7 one.)
            kwargs.update(channels=tuple(channels), stem_width=channels[0])
        try:
            self.backbone = timm.create_model(backbone, num_classes=0, **kwargs)
        except TypeError as exc:
            raise ValueError(f"model.backbone_channels: {backbone} does not take stage widths ({exc}); "
                             "use a ResNet-family backbone or set backbone_channels: []") from exc
        if low_res_stem:
            # ImageNet stems shrink the input 4x before the first block; at 80x64 that leaves a 3x2 map
            # at the end. Without the stem pool the network keeps 4x the positions (and ~4x the cost).
            if not isinstance(getattr(self.backbone, "maxpool", None), nn.MaxPool2d):
                raise ValueError(f"model.low_res_stem: backbone {backbone} has no stem max-pool to remove; "
                                 "use a ResNet-family backbone or set low_res_stem: false")
            self.backbone.maxpool = nn.Identity()
        if stem_width:
            narrow_stem(self.backbone, stem_width, backbone)
        cfg = timm.data.resolve_model_data_config(self.backbone)
        self.register_buffer("mean", torch.tensor(cfg["mean"]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(cfg["std"]).view(1, 3, 1, 1), persistent=False)
        # Models with a conv head (MobileNetV3, EfficientNet...) emit head_hidden_size, not num_features.
        width = getattr(self.backbone, "head_hidden_size", None) or self.backbone.num_features
        self.proj = nn.Sequential(nn.Dropout(dropout), nn.Linear(width, out_dim))
        self.out_dim = out_dim
        self.frozen: list[nn.Module] = []
        self.folded = False
        self._trunk_key: str | None = None

    def freeze_backbone(self, keep_last_stage: bool = False) -> None:
        """Keep the backbone as trained (weights and BatchNorm statistics); the projection still learns and,
        with `keep_last_stage`, so do the last stage and any head after it (timm's feature_info order)."""
        params = list(self.backbone.named_parameters())
        cut = len(params)
        if keep_last_stage:
            last = self.backbone.feature_info[-1]["module"]
            cut = next(i for i, (n, _) in enumerate(params) if n.startswith(last + "."))
        owners = {n.rsplit(".", 1)[0] for n, _ in params[:cut]}
        self.frozen = [m for n, m in self.backbone.named_modules() if n in owners]
        for _, p in params[:cut]:
            p.requires_grad_(False)
        self.train(self.training)

    def train(self, mode: bool = True) -> ImageTower:
        if mode and self.folded:
            raise RuntimeError("this image tower was prepared for inference (BatchNorm folded) and cannot "
                               "train; load the checkpoint again to train it")
        super().train(mode)
        for module in self.frozen:
            module.eval()  # BatchNorm must not drift from the statistics the frozen weights were trained with
        return self

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        x = images.permute(0, 3, 1, 2).float().div_(255.0)  # (B, 3, H, W)
        return (x - self.mean) / self.std

    def forward(self, images: torch.Tensor, trunk: torch.Tensor | None = None) -> torch.Tensor:
        """(B, out_dim). `trunk`: this batch's `trunk()` output, computed once for every tower whose
        `trunk_key()` is the same (the fusion network keeps the image baseline's frozen stages)."""
        if trunk is not None:
            return self.proj(self.backbone.forward_head(self.backbone.layer4(trunk)))
        return self.proj(self.backbone(self.preprocess(images)))

    def _is_plain_resnet(self) -> bool:
        # timm's ResNet runs conv1, bn1, act1, maxpool, layer1..layer4 then its head (forward_features)
        return type(self.backbone).__name__ == "ResNet" and all(
            hasattr(self.backbone, n) for n in ("conv1", "bn1", "act1", "maxpool", *RESNET_STAGES))

    def trunk(self, images: torch.Tensor) -> torch.Tensor:
        """The backbone up to its last stage (ResNet family): what `forward(images, trunk=...)` continues."""
        b = self.backbone
        x = b.maxpool(b.act1(b.bn1(b.conv1(self.preprocess(images)))))
        return b.layer3(b.layer2(b.layer1(x)))

    def trunk_key(self) -> str | None:
        """A digest of every weight and statistic before the last stage; equal keys = the same `trunk()`.
        None when the backbone is not a plain ResNet (no split point known) or the tower is training."""
        if self.training or not self._is_plain_resnet():
            return None
        if self._trunk_key is not None:
            return self._trunk_key
        h = hashlib.md5(repr(self.folded).encode())
        for name in ("conv1", "bn1", *RESNET_STAGES[:-1]):
            for key, t in getattr(self.backbone, name).state_dict().items():
                h.update(key.encode())
                h.update(t.detach().cpu().contiguous().numpy().tobytes())
        if self.folded:  # frozen for good: a folded tower cannot train
            self._trunk_key = h.hexdigest()
        return h.hexdigest()

    def fold_batchnorm(self) -> None:
        """Fold each BatchNorm into the convolution before it (inference only: ~20 % less CPU time per image).

        Exact up to float rounding; after it the tower cannot train (no BatchNorm left to learn), so
        `train()` refuses. A no-op for backbones other than a plain ResNet.
        """
        if self.folded or not self._is_plain_resnet():
            return
        b = self.backbone
        pairs = [(b, "conv1", "bn1")] if isinstance(b.conv1, nn.Conv2d) else []
        for stage in RESNET_STAGES:
            for block in getattr(b, stage):
                pairs += [(block, f"conv{i}", f"bn{i}") for i in (1, 2, 3) if hasattr(block, f"bn{i}")]
                down = getattr(block, "downsample", None)
                if isinstance(down, nn.Sequential):
                    pairs += [(down, str(i), str(i + 1)) for i in range(len(down) - 1)
                              if isinstance(down[i], nn.Conv2d) and isinstance(down[i + 1], nn.BatchNorm2d)]
        self.eval()
        for owner, conv, bn in pairs:
            c, n = getattr(owner, conv), getattr(owner, bn)
            if isinstance(c, nn.Conv2d) and isinstance(n, nn.BatchNorm2d):
                setattr(owner, conv, fuse_conv_bn_eval(c, n))
                setattr(owner, bn, nn.Identity())
        self.folded = True


def narrow_stem(backbone: nn.Module, width: int, name: str) -> None:
    """Give a ResNet's plain 7x7 stem `width` channels (freshly initialised) instead of 64.

    timm sizes the plain stem at 64 whatever `stem_width` says (it honours the width only for deep stems), so
    a half-width ResNet kept a full-width stem: at 80x64 its 40x32 maps were a fifth of the forward FLOPs
    and the largest activations of the network (convolution, BatchNorm, max-pool and their backward).
    """
    conv1, layer1 = getattr(backbone, "conv1", None), getattr(backbone, "layer1", None)
    if not isinstance(conv1, nn.Conv2d) or not isinstance(layer1, nn.Sequential):
        raise ValueError(f"model.stem_width: backbone {name} has no plain ResNet stem (conv1 + layer1) to "
                         "narrow; use a ResNet-family backbone such as resnet18, or set stem_width: 0")
    old = conv1.out_channels

    def conv_from(c: nn.Conv2d, in_ch: int, out_ch: int) -> nn.Conv2d:
        new = nn.Conv2d(in_ch, out_ch, c.kernel_size, c.stride, c.padding, bias=c.bias is not None)
        nn.init.kaiming_normal_(new.weight, mode="fan_out", nonlinearity="relu")  # as timm initialises convs
        return new

    backbone.conv1 = conv_from(conv1, conv1.in_channels, width)
    backbone.bn1 = type(backbone.bn1)(width)
    block = layer1[0]
    block.conv1 = conv_from(block.conv1, width, block.conv1.out_channels)
    down = getattr(block, "downsample", None)
    if down is not None:
        convs = [(i, m) for i, m in enumerate(down) if isinstance(m, nn.Conv2d) and m.in_channels == old]
        i, c = convs[0]
        if c.out_channels == width and c.stride == (1, 1) and len(down) == 2:
            block.downsample = None  # same width in and out: the identity shortcut, as torchvision's layer1
        else:
            down[i] = conv_from(c, width, c.out_channels)
    backbone.feature_info[0]["num_chs"] = width


class TextTower(nn.Module):
    """HUSE-style text CNN (token embeddings, parallel 1-D convolutions, masked max-pool) plus a bag of
    hashed character trigrams, which carries rare and misspelt words the vocabulary maps to <unk>."""

    def __init__(self, vocab_size: int, emb_dim: int, channels: int, kernels: tuple[int, ...],
                 out_dim: int, dropout: float, subword_buckets: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, emb_dim, padding_idx=0)
        self.convs = nn.ModuleList(nn.Conv1d(emb_dim, channels, k, padding=k // 2) for k in kernels)
        self.subwords = nn.EmbeddingBag(subword_buckets, emb_dim, mode="mean", padding_idx=0, sparse=True)
        self.proj = nn.Sequential(nn.Dropout(dropout), nn.Linear(channels * len(kernels) + emb_dim, out_dim))
        self.out_dim = out_dim

    def forward(self, tokens: torch.Tensor, subwords: torch.Tensor) -> torch.Tensor:
        mask = tokens.ne(0)  # (B, L)
        x = self.embed(tokens).transpose(1, 2)  # (B, E, L)
        pooled = []
        for conv in self.convs:
            h = F.relu(conv(x))[..., : tokens.shape[1]]  # (B, C, L); even kernels add one position
            h = h.masked_fill(~mask.unsqueeze(1), float("-inf")).amax(dim=2)
            pooled.append(torch.nan_to_num(h, neginf=0.0))  # empty titles pool to zeros
        pooled.append(self.subwords(subwords))  # (B, E); all-padding rows give zeros
        return self.proj(torch.cat(pooled, dim=1))


class MetadataTower(nn.Module):
    """Categorical embeddings + numeric features + bag of attribute tokens -> MLP."""

    def __init__(self, cardinalities: list[int], n_numeric: int, attr_vocab: int, emb_dim: int,
                 out_dim: int, dropout: float) -> None:
        super().__init__()
        self.cats = nn.ModuleList(nn.Embedding(c, emb_dim) for c in cardinalities)
        self.attrs = nn.EmbeddingBag(attr_vocab, emb_dim, mode="mean", padding_idx=0)
        width = emb_dim * (len(cardinalities) + 1) + n_numeric
        self.mlp = nn.Sequential(nn.Linear(width, out_dim), nn.ReLU(), nn.Dropout(dropout),
                                 nn.Linear(out_dim, out_dim))
        self.out_dim = out_dim

    def forward(self, cat: torch.Tensor, num: torch.Tensor, attrs: torch.Tensor) -> torch.Tensor:
        parts = [emb(cat[:, i]) for i, emb in enumerate(self.cats)]
        parts.append(self.attrs(attrs))
        parts.append(num)
        return self.mlp(torch.cat(parts, dim=1))


class WideHead(nn.Module):
    """The "wide" part of Wide & Deep: one weight per (input token, class), trained with the towers.

    Inputs are the title's hashed n-grams and the metadata tokens (categorical values, attributes), each
    group an L2-normalised binary bag as in TF-IDF. It memorises exact token-class evidence (rare article
    types named in the title) that the deep towers smooth over. Returns class logits per group so that
    the model can switch a group off with its modality.
    """

    def __init__(self, subword_buckets: int, attr_vocab: int, cardinalities: list[int], n_out: int,
                 text: bool, metadata: bool) -> None:
        super().__init__()
        self.text = (nn.EmbeddingBag(subword_buckets, n_out, mode="sum", padding_idx=0, sparse=True)
                     if text else None)
        self.meta = None
        if metadata:
            # All categorical fields share one table: field i's ids are shifted by the fields before it.
            offsets = torch.tensor([0, *cardinalities[:-1]]).cumsum(0)
            self.register_buffer("cat_offsets", offsets, persistent=False)
            self.meta = nn.EmbeddingBag(sum(cardinalities) + attr_vocab, n_out, mode="sum", padding_idx=None)
            self.attr_offset = sum(cardinalities)
        for table in (self.text, self.meta):
            if table is not None:
                nn.init.zeros_(table.weight)  # a linear model starts from zero; the deep part leads early

    @staticmethod
    def _normalised_bag(table: nn.EmbeddingBag, ids: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        norm = weights.sum(1, keepdim=True).clamp(min=1.0).rsqrt()
        return table(ids, per_sample_weights=weights * norm)

    def forward(self, subwords: torch.Tensor, cat: torch.Tensor, attrs: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {}
        if self.text is not None:
            out["text"] = self._normalised_bag(self.text, subwords, subwords.ne(0).float())
        if self.meta is not None:
            ids = torch.cat([cat + self.cat_offsets, attrs + self.attr_offset], dim=1)
            # Padding attribute slots (id 0) carry weight 0; every categorical field counts (0 = missing).
            weights = torch.cat([torch.ones_like(cat, dtype=torch.float), attrs.ne(0).float()], dim=1)
            out["metadata"] = self._normalised_bag(self.meta, ids, weights)
        return out
