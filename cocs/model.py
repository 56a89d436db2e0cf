"""Context Cluster backbones: point reducers, cluster blocks, stages, and the timm registry.

Module names and parameter shapes follow the authors' release, so that their checkpoints load
with ``strict=True`` (see :func:`load_official_checkpoint`). The whole network runs in the
channels-last memory layout by default, where every per-point linear map is a plain matrix
product without copies; ``channels_last=False`` gives the NCHW layout of the release.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from timm.layers import DropPath, trunc_normal_
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices
from torch import Tensor, nn

from .cluster import Cluster
from .points import with_positions


class GroupNorm(nn.GroupNorm):
    """GroupNorm with one group: normalises each sample over all its points and channels."""

    def __init__(self, num_channels: int, **kwargs):
        super().__init__(1, num_channels, **kwargs)


PADDING_MODES = ("zeros", "circular", "reflect", "replicate")  # torch's Conv2d padding modes


class PointReducer(nn.Module):
    """Point reducer: the points nearest to evenly spaced anchors are concatenated and
    projected linearly, which is a strided convolution: (B, C, H, W) -> (B, D, H', W')."""

    def __init__(
        self, *, in_chans: int, embed_dim: int, patch_size: int, stride: int, padding: int,
        padding_mode: str = "zeros",
    ):  # fmt: skip
        super().__init__()
        if padding_mode not in PADDING_MODES:
            raise ValueError(
                f"padding_mode={padding_mode!r} is not one of {PADDING_MODES}: 'zeros' is the "
                "paper's; 'circular' wraps the map around, so that no point sits on a border"
            )
        self.proj = nn.Conv2d(
            in_chans, embed_dim, kernel_size=patch_size, stride=stride, padding=padding,
            padding_mode=padding_mode,
        )  # fmt: skip

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x)


class _LeanMlp(torch.autograd.Function):
    """fc2(gelu(fc1(x))) that keeps only its input for the backward pass.

    Autograd would keep the hidden pre-activation and the GELU output, 2 x mlp_ratio times the
    size of the input; recomputing fc1 in the backward pass costs one matrix product and
    halves the training step's peak memory. The arithmetic is that of the plain layers."""

    @staticmethod
    def forward(ctx, x, w1, b1, w2, b2):  # x (..., C), w1 (hidden, C), w2 (C, hidden)
        ctx.save_for_backward(x, w1, b1, w2)
        return F.linear(F.gelu(F.linear(x, w1, b1)), w2, b2)

    @staticmethod
    def backward(ctx, grad_out):
        x, w1, b1, w2 = ctx.saved_tensors
        h = F.linear(x, w1, b1)  # (..., hidden), recomputed
        g = F.gelu(h)
        go = grad_out.reshape(-1, grad_out.shape[-1])  # (P, C)
        grad_w2 = go.t() @ g.reshape(-1, g.shape[-1])
        grad_b2 = go.sum(0)
        grad_h = torch.ops.aten.gelu_backward(grad_out @ w2, h)  # (..., hidden)
        del g, h
        gh = grad_h.reshape(-1, grad_h.shape[-1])
        grad_w1 = gh.t() @ x.reshape(-1, x.shape[-1])
        grad_b1 = gh.sum(0)
        grad_x = grad_h @ w1
        return grad_x, grad_w1, grad_b1, grad_w2, grad_b2


class Mlp(nn.Module):
    """Per-point MLP, applied channels-last: (B, C, H, W) -> (B, C, H, W).

    ``lean=True`` (the default) recomputes the hidden layer in the backward pass instead of
    storing it (see :class:`_LeanMlp`); ``lean=False`` lets autograd store everything.
    """

    def __init__(self, *, dim: int, hidden: int, drop: float = 0.0, lean: bool = True):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)
        self.lean = lean

    def forward(self, x: Tensor) -> Tensor:
        x = x.permute(0, 2, 3, 1)  # (B, H, W, C)
        if (
            self.lean
            and self.drop.p == 0
            and torch.is_grad_enabled()
            and not torch.is_autocast_enabled(x.device.type)  # autocast: plain layers
        ):
            x = _LeanMlp.apply(x, self.fc1.weight, self.fc1.bias, self.fc2.weight, self.fc2.bias)
        else:
            x = self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))
        return x.permute(0, 3, 1, 2)


class ClusterBlock(nn.Module):
    """x + drop_path(ls1 * mixer(norm1(x))), then x + drop_path(ls2 * mlp(norm2(x)))."""

    def __init__(
        self,
        *,
        dim: int,
        mlp_ratio: float = 4.0,
        drop: float = 0.0,
        drop_path: float = 0.0,
        use_layer_scale: bool = True,
        layer_scale_init_value: float = 1e-5,
        mixer: str = "cluster",
        lean_mlp: bool = True,
        **cluster_kwargs,
    ):
        super().__init__()
        self.norm1 = GroupNorm(dim)
        if mixer == "cluster":
            self.token_mixer = Cluster(dim=dim, out_dim=dim, **cluster_kwargs)
        elif mixer == "none":  # the paper's "position information only" ablation
            self.token_mixer = nn.Identity()
        else:
            raise ValueError(f"mixer={mixer!r} is not 'cluster' or 'none'")
        self.norm2 = GroupNorm(dim)
        self.mlp = Mlp(dim=dim, hidden=int(dim * mlp_ratio), drop=drop, lean=lean_mlp)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.use_layer_scale = use_layer_scale
        if use_layer_scale:
            self.layer_scale_1 = nn.Parameter(layer_scale_init_value * torch.ones(dim))
            self.layer_scale_2 = nn.Parameter(layer_scale_init_value * torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        mixed, mlp = self.token_mixer, self.mlp
        if self.use_layer_scale:
            x = x + self.drop_path(self.layer_scale_1.view(-1, 1, 1) * mixed(self.norm1(x)))
            x = x + self.drop_path(self.layer_scale_2.view(-1, 1, 1) * mlp(self.norm2(x)))
        else:
            x = x + self.drop_path(mixed(self.norm1(x)))
            x = x + self.drop_path(mlp(self.norm2(x)))
        return x


def _per_stage(value, n: int, name: str) -> list:
    values = list(value) if isinstance(value, Sequence) else [value] * n
    if len(values) != n:
        raise ValueError(f"{name}={value!r} must give one value per stage ({n} stages)")
    return values


class ContextCluster(nn.Module):
    """Context Cluster backbone and classifier.

    ``network`` alternates stages (nn.Sequential of ClusterBlock) and point reducers, as in the
    release: network.0 stage 1, network.1 reducer, network.2 stage 2, ...

    Input: (B, in_chans, H, W) images. ``fold_w`` and ``fold_h`` cut each stage's map into
    regions; unlike the release, one fold above 1 partitions even when the other is 1 (see
    :func:`cocs.cluster.context_cluster`). ``use_positions`` appends the two coordinate channels
    (the paper's 5-D points); without them points carry colour only (an ablation).
    ``down_pad_mode`` pads the point reducers between stages: with zeros as the paper (a point
    on the border of a map sees zeros where an inner point sees neighbours), or ``"circular"``,
    wrapping the map around so that no point sits on a border (an ablation).
    ``lean_mlp`` makes the MLPs recompute their hidden layer in the backward pass instead of
    storing it (see :class:`Mlp`), one value per stage or one for all; the same arithmetic
    either way. The default, ``None``, recomputes in the first two stages only: they hold most
    of a training step's activations (at 224 px, recomputing there roughly halves the peak
    memory), while the later stages' few points cost little to store and recomputing their
    wide layers would cost the most time.
    """

    def __init__(
        self,
        *,
        layers: Sequence[int],
        embed_dims: Sequence[int],
        mlp_ratios: Sequence[float] | float = 4.0,
        heads: Sequence[int] | int = 4,
        head_dim: Sequence[int] | int = 24,
        proposal_w: Sequence[int] | int = 2,
        proposal_h: Sequence[int] | int = 2,
        fold_w: Sequence[int] | int = 1,
        fold_h: Sequence[int] | int = 1,
        in_chans: int = 3,
        num_classes: int = 1000,
        in_patch_size: int = 4,
        in_stride: int = 4,
        in_pad: int = 0,
        down_patch_size: int = 3,
        down_stride: int = 2,
        down_pad: int = 1,
        down_pad_mode: str = "zeros",
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        use_layer_scale: bool = True,
        layer_scale_init_value: float = 1e-5,
        use_positions: bool = True,
        mixer: str = "cluster",
        similarity: str = "sigmoid",
        center_iters: int = 0,
        channels_last: bool = True,
        lean_mlp: Sequence[bool] | bool | None = None,
        global_pool: str = "avg",
    ):
        super().__init__()
        n = len(layers)
        embed_dims = _per_stage(embed_dims, n, "embed_dims")
        per_stage = {
            "mlp_ratio": _per_stage(mlp_ratios, n, "mlp_ratios"),
            "heads": _per_stage(heads, n, "heads"),
            "head_dim": _per_stage(head_dim, n, "head_dim"),
            "proposal_w": _per_stage(proposal_w, n, "proposal_w"),
            "proposal_h": _per_stage(proposal_h, n, "proposal_h"),
            "fold_w": _per_stage(fold_w, n, "fold_w"),
            "fold_h": _per_stage(fold_h, n, "fold_h"),
            "lean_mlp": _per_stage(
                [i < 2 for i in range(n)] if lean_mlp is None else lean_mlp, n, "lean_mlp"
            ),
        }
        if global_pool not in ("avg", ""):
            raise ValueError(f"global_pool={global_pool!r}: only 'avg' or '' (none) are supported")
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.use_positions = use_positions
        self.channels_last = channels_last
        self.global_pool = global_pool
        self.num_features = self.head_hidden_size = embed_dims[-1]
        self.embed_dim = embed_dims[-1]
        self.drop_rate = drop_rate
        self.grad_checkpointing = False

        self.patch_embed = PointReducer(
            in_chans=in_chans + (2 if use_positions else 0),
            embed_dim=embed_dims[0],
            patch_size=in_patch_size,
            stride=in_stride,
            padding=in_pad,
        )
        total = sum(layers)  # stochastic depth grows linearly from 0 to drop_path_rate
        dpr = [drop_path_rate * i / max(total - 1, 1) for i in range(total)]
        network, self.feature_info = [], []
        reduction, depth = in_stride, 0
        for i, n_blocks in enumerate(layers):
            stage_kwargs = {k: v[i] for k, v in per_stage.items()}
            blocks = [
                ClusterBlock(
                    dim=embed_dims[i],
                    drop=drop_rate,
                    drop_path=dpr[depth + j],
                    use_layer_scale=use_layer_scale,
                    layer_scale_init_value=layer_scale_init_value,
                    mixer=mixer,
                    similarity=similarity,
                    center_iters=center_iters,
                    **stage_kwargs,
                )
                for j in range(n_blocks)
            ]
            depth += n_blocks
            self.feature_info.append(
                dict(num_chs=embed_dims[i], reduction=reduction, module=f"network.{len(network)}")
            )
            network.append(nn.Sequential(*blocks))
            if i < n - 1:
                network.append(
                    PointReducer(
                        in_chans=embed_dims[i],
                        embed_dim=embed_dims[i + 1],
                        patch_size=down_patch_size,
                        stride=down_stride,
                        padding=down_pad,
                        padding_mode=down_pad_mode,
                    )
                )
                reduction *= down_stride
        self.network = nn.ModuleList(network)
        self.norm = GroupNorm(embed_dims[-1])
        self.head = nn.Linear(embed_dims[-1], num_classes) if num_classes > 0 else nn.Identity()
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    # timm model interface ---------------------------------------------------------------
    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return set()

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(
            stem=r"^patch_embed", blocks=r"^network\.(\d+)" if coarse else r"^network\.(\d+)\.(\d+)"
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace the classifier with a new one for ``num_classes`` (0: none)."""
        if global_pool is not None:
            if global_pool not in ("avg", ""):
                raise ValueError(f"global_pool={global_pool!r}: only 'avg' or '' are supported")
            self.global_pool = global_pool
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    # forward ------------------------------------------------------------------------------
    def _check_input(self, x: Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != self.in_chans:
            raise ValueError(
                f"expected images of shape (B, {self.in_chans}, H, W), got {tuple(x.shape)}; "
                f"convert grayscale or RGBA images to {self.in_chans} channels "
                "(e.g. PIL's .convert('RGB')) and add a batch dimension"
            )

    def forward_embeddings(self, x: Tensor) -> Tensor:
        """Images (B, C, H, W) -> points of stage 1 (B, D, H / stride, W / stride)."""
        self._check_input(x)
        if self.use_positions:
            x = with_positions(x)  # (B, C + 2, H, W): colour plus position
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.patch_embed(x)

    def _run(self, module: nn.Module, x: Tensor) -> Tensor:
        if self.grad_checkpointing and self.training and not torch.jit.is_scripting():
            return torch.utils.checkpoint.checkpoint(module, x, use_reentrant=False)
        return module(x)

    def forward_features(self, x: Tensor) -> Tensor:
        """Images -> output of the last stage, before the final norm (B, D, H / 32, W / 32)."""
        x = self.forward_embeddings(x)
        for module in self.network:
            x = self._run(module, x)
        return x

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = self.norm(x)
        if self.global_pool == "avg":
            x = x.mean((-2, -1))
        return x if pre_logits else self.head(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(
        self,
        x: Tensor,
        indices: int | list[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[Tensor] | tuple[Tensor, list[Tensor]]:
        """Stage outputs for dense tasks (timm's ``features_only`` convention).

        Returns the outputs of the stages named by ``indices`` (B, D_i, H / r_i, W / r_i), and,
        unless ``intermediates_only``, the final features too.
        """
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt={output_fmt!r}: only 'NCHW' is supported")
        take, max_index = feature_take_indices(len(self.feature_info), indices)
        x = self.forward_embeddings(x)
        intermediates = []
        stages = self.network if not stop_early else self.network[: 2 * max_index + 1]
        for idx, module in enumerate(stages):
            x = self._run(module, x)
            if idx % 2 == 0 and idx // 2 in take:
                intermediates.append(x.contiguous())
        if intermediates_only:
            return intermediates
        return self.norm(x) if norm else x, intermediates

    def prune_intermediate_layers(
        self, indices=1, prune_norm: bool = False, prune_head: bool = True
    ):
        take, max_index = feature_take_indices(len(self.feature_info), indices)
        self.network = self.network[: 2 * max_index + 1]
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0, "")
        return take


def unknown_model_message(name: str) -> str | None:
    """Why ``name`` cannot be created (close names, the variants), or None if it can."""
    import difflib

    import timm

    if timm.is_model(name):
        return None
    close = difflib.get_close_matches(name, timm.list_models(), n=3)
    return (
        f"unknown model {name!r}"
        + (f"; did you mean {', '.join(close)}?" if close else "")
        + f" The Context Cluster variants are {', '.join(sorted(timm.list_models('coc_*')))}; "
        "any other timm model is given by its timm name (timm.list_models() lists them)."
    )


def create_model(name: str, **kwargs) -> nn.Module:
    """``timm.create_model`` with an error that lists the Context Cluster variants.

    Any timm model name works (the peers of the CIFAR chapter, for example); an unknown name
    raises ValueError naming the close matches.
    """
    import timm

    if (problem := unknown_model_message(name)) is not None:
        raise ValueError(problem)
    return timm.create_model(name, **kwargs)


@contextlib.contextmanager
def capture_assignments(model: nn.Module) -> Iterator[dict[str, Tensor]]:
    """Record the hard assignment of every context-cluster layer during forward passes.

    Yields a dict that fills with ``{module name: (B, heads, H, W) assignment}``: the values that
    :func:`cocs.cluster.context_cluster` returned, taken from the layers through forward hooks.
    """
    with _capture(model, "last_assignment") as found:
        yield found


@contextlib.contextmanager
def capture_similarities(model: nn.Module) -> Iterator[dict[str, Tensor]]:
    """Like :func:`capture_assignments`, for each point's similarity to the centre it joined:
    ``{module name: (B, heads, H, W)}``, the weights of the clusters' aggregates."""
    with _capture(model, "last_similarity") as found:
        yield found


@contextlib.contextmanager
def _capture(model: nn.Module, attribute: str) -> Iterator[dict[str, Tensor]]:
    found: dict[str, Tensor] = {}
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, Cluster):
            module.keep_assignment = True

            def hook(mod, _inp, _out, name=name):
                found[name] = getattr(mod, attribute)

            handles.append(module.register_forward_hook(hook))
    try:
        yield found
    finally:
        for h in handles:
            h.remove()
        for module in model.modules():
            if isinstance(module, Cluster):
                module.keep_assignment = False
                module.last_assignment = module.last_similarity = None


# registry ----------------------------------------------------------------------------------
def _cfg(**kwargs) -> dict:
    return {
        "url": "",
        "num_classes": 1000,
        "input_size": (3, 224, 224),
        "pool_size": (7, 7),
        "crop_pct": 0.95,
        "interpolation": "bicubic",
        "mean": (0.485, 0.456, 0.406),
        "std": (0.229, 0.224, 0.225),
        "first_conv": "patch_embed.proj",
        "classifier": "head",
        "license": "mit",
        **kwargs,
    }


CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)

default_cfgs = generate_default_cfgs(
    {
        "coc_tiny": _cfg(),
        "coc_tiny2": _cfg(),
        "coc_tiny_plain": _cfg(),
        "coc_small": _cfg(),
        "coc_medium": _cfg(),
        "coc_base_dim64": _cfg(),
        "coc_base_dim96": _cfg(),
        "coc_cifar": _cfg(
            num_classes=10,
            input_size=(3, 32, 32),
            pool_size=(2, 2),
            crop_pct=1.0,
            mean=CIFAR_MEAN,
            std=CIFAR_STD,
        ),
        "coc_imagenette": _cfg(num_classes=10, input_size=(3, 128, 128), pool_size=(4, 4)),
        "coc_micro": _cfg(
            num_classes=10,
            input_size=(3, 32, 32),
            pool_size=(2, 2),
            crop_pct=1.0,
            mean=CIFAR_MEAN,
            std=CIFAR_STD,
        ),
    }
)


def _create(variant: str, pretrained: bool = False, **kwargs) -> ContextCluster:
    """Build ``variant``; ``pretrained=True`` loads the weights that ship with cocs for it
    (:mod:`cocs.weights`: the handbook's own trained small models, offline). The authors'
    ImageNet checkpoints are not shipped: load them with :func:`cocs.load_official_checkpoint`."""
    model = build_model_with_cfg(
        ContextCluster,
        variant,
        pretrained=False,
        feature_cfg=dict(feature_cls="getter", out_indices=(0, 1, 2, 3)),
        **kwargs,
    )
    if pretrained:
        from .weights import load_shipped

        load_shipped(model, variant)
    return model


# The released ImageNet variants: stem 4x4/4, reducers 3x3/2, stages at 1/4 ... 1/32.
_TINY = dict(
    layers=(3, 4, 5, 2),
    embed_dims=(32, 64, 196, 320),
    mlp_ratios=(8, 8, 4, 4),
    heads=(4, 4, 8, 8),
    head_dim=24,
)
_SMALL_DIMS = dict(embed_dims=(64, 128, 320, 512), mlp_ratios=(8, 8, 4, 4), head_dim=32)
_REGIONS = dict(proposal_w=2, proposal_h=2, fold_w=(8, 4, 2, 1), fold_h=(8, 4, 2, 1))


def _merge(*cfgs: dict, **kwargs) -> dict:
    out: dict = {}
    for c in cfgs:
        out.update(c)
    out.update(kwargs)
    return out


@register_model
def coc_tiny(pretrained: bool = False, **kwargs) -> ContextCluster:
    """Context-Cluster-Ti: 5.3 x 2^20 parameters, region partition 8/4/2/1."""
    return _create("coc_tiny", pretrained, **_merge(_TINY, _REGIONS, kwargs))


@register_model
def coc_tiny2(pretrained: bool = False, **kwargs) -> ContextCluster:
    """Context-Cluster-Ti with fewer regions (folds 7/7/1/1, centres 4/2/7/4 per side)."""
    return _create(
        "coc_tiny2",
        pretrained,
        **_merge(
            _TINY,
            dict(
                proposal_w=(4, 2, 7, 4),
                proposal_h=(4, 2, 7, 4),
                fold_w=(7, 7, 1, 1),
                fold_h=(7, 7, 1, 1),
            ),
            kwargs,
        ),
    )


@register_model
def coc_tiny_plain(pretrained: bool = False, **kwargs) -> ContextCluster:
    """Context-Cluster-Ti without region partition (centres 4/4/2/2 per side)."""
    return _create(
        "coc_tiny_plain",
        pretrained,
        **_merge(
            _TINY,
            dict(proposal_w=(4, 4, 2, 2), proposal_h=(4, 4, 2, 2), fold_w=1, fold_h=1),
            kwargs,
        ),
    )


@register_model
def coc_small(pretrained: bool = False, **kwargs) -> ContextCluster:
    """Context-Cluster-Small: 14.0 x 2^20 parameters."""
    return _create(
        "coc_small",
        pretrained,
        **_merge(_SMALL_DIMS, _REGIONS, dict(layers=(2, 2, 6, 2), heads=(4, 4, 8, 8)), kwargs),
    )


@register_model
def coc_medium(pretrained: bool = False, **kwargs) -> ContextCluster:
    """Context-Cluster-Medium: 27.9 x 2^20 parameters."""
    return _create(
        "coc_medium",
        pretrained,
        **_merge(_SMALL_DIMS, _REGIONS, dict(layers=(4, 4, 12, 4), heads=(6, 6, 12, 12)), kwargs),
    )


@register_model
def coc_base_dim64(pretrained: bool = False, **kwargs) -> ContextCluster:
    """Context-Cluster-Base, 64 channels in stage 1."""
    return _create(
        "coc_base_dim64",
        pretrained,
        **_merge(_SMALL_DIMS, _REGIONS, dict(layers=(6, 6, 24, 6), heads=(8, 8, 16, 16)), kwargs),
    )


@register_model
def coc_base_dim96(pretrained: bool = False, **kwargs) -> ContextCluster:
    """Context-Cluster-Base, 96 channels in stage 1."""
    return _create(
        "coc_base_dim96",
        pretrained,
        **_merge(
            _REGIONS,
            dict(
                layers=(4, 4, 12, 4),
                embed_dims=(96, 192, 384, 768),
                mlp_ratios=(8, 8, 4, 4),
                heads=(8, 8, 16, 16),
                head_dim=32,
            ),
            kwargs,
        ),
    )


@register_model
def coc_cifar(pretrained: bool = False, **kwargs) -> ContextCluster:
    """For 32x32 images (CIFAR): stem 2x2/2, stages at 16, 8, 4, 2 points per side."""
    return _create(
        "coc_cifar",
        pretrained,
        **_merge(
            dict(
                layers=(2, 2, 4, 2),
                embed_dims=(32, 64, 128, 256),
                mlp_ratios=(4, 4, 4, 4),
                # heads of 32 channels, as in the paper's CoC-Small and -Medium: the same
                # channels in half as many clustering groups as 16-channel heads, which is
                # faster on a CPU
                heads=(2, 2, 4, 4),
                head_dim=32,
                proposal_w=(2, 2, 2, 1),
                proposal_h=(2, 2, 2, 1),
                fold_w=(4, 2, 1, 1),
                fold_h=(4, 2, 1, 1),
                in_patch_size=2,
                in_stride=2,
                num_classes=10,
                # 32 px activations are small: storing the MLPs' hidden layers costs little
                # memory and is faster than recomputing them
                lean_mlp=False,
            ),
            kwargs,
        ),
    )


@register_model
def coc_imagenette(pretrained: bool = False, **kwargs) -> ContextCluster:
    """For 64-128 px images (Imagenette): the tiny layout with folds 4/2/1/1."""
    return _create(
        "coc_imagenette",
        pretrained,
        **_merge(
            dict(
                layers=(2, 2, 4, 2),
                embed_dims=(32, 64, 160, 256),
                mlp_ratios=(8, 8, 4, 4),
                heads=(4, 4, 8, 8),
                head_dim=16,
                proposal_w=2,
                proposal_h=2,
                fold_w=(4, 2, 1, 1),
                fold_h=(4, 2, 1, 1),
                num_classes=10,
            ),
            kwargs,
        ),
    )


@register_model
def coc_micro(pretrained: bool = False, **kwargs) -> ContextCluster:
    """A few thousand parameters, for fast tests on 32x32 inputs."""
    return _create(
        "coc_micro",
        pretrained,
        **_merge(
            dict(
                layers=(1, 1, 1, 1),
                embed_dims=(8, 16, 24, 32),
                mlp_ratios=2,
                heads=2,
                head_dim=4,
                proposal_w=2,
                proposal_h=2,
                fold_w=(2, 1, 1, 1),
                fold_h=(2, 1, 1, 1),
                in_patch_size=2,
                in_stride=2,
                num_classes=10,
            ),
            kwargs,
        ),
    )
