"""The conditional diffusion transformer over parameters, p(theta_future | theta_start, metrics).

Inputs per network: the noisy future parameters ``theta_noisy`` (B, D), the starting parameters
``theta_start`` (B, D), the starting metric and the prompted metric (B,), the diffusion timestep
(B,). Output: a prediction of the future parameters themselves (x0-prediction),
``theta_start + skip + change``. ``change`` is decoded from the tokens; ``skip`` is a learned,
noise-level dependent multiple (one per tensor) of the noisy change ``theta_noisy - sqrt(abar_t) *
theta_start``, so low-noise inputs need not squeeze every coordinate through the tokens (without it
a few hundred token dimensions cannot even copy ``theta_noisy`` back at t = 0). Both start at zero,
so an untrained model returns ``theta_start`` unchanged.

The backbone is DiT's: pre-LN transformer blocks from timm's ``Attention`` (fused
scaled-dot-product attention on CUDA, explicit matmuls on the CPU) and ``Mlp``, modulated by the
conditioning vector through adaLN-Zero. All metric and time inputs are scalars embedded with Fourier
features.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from timm.layers import Attention, Mlp
from torch import nn

from gpt_params.diffusion import DiffusionConfig, train_scheduler
from gpt_params.errors import GptParamsError
from gpt_params.layout import ParamLayout, PermGroup, Role, RolePlan
from gpt_params.tokenizers import MESSAGE_NORMS, ChunkTokenizer, NeuronTokenizer, RoleTokenizer, edge_messages


@dataclass
class ModelConfig:
    """Architecture of a :class:`ParamDiffusionTransformer`."""

    width: int = 256  # token width E
    depth: int = 6  # transformer blocks
    heads: int = 4  # attention heads
    mlp_ratio: float = 4.0  # MLP hidden width / E
    tokenizer: str = "neuron"  # "neuron" (permutation-equivariant), "chunk" (G.pt) or "role" (a family)
    chunk: int = 256  # values per chunk token
    edge_width: int = 64  # neuron tokenizer: width of the per-weight pair head between hidden layers
    fourier_features: int = 64  # sin/cos pairs per scalar input
    metric_max_freq: float = 10.0  # highest Fourier frequency of the (normalised) metric inputs
    # role tokenizer: condition every block on each hidden layer's width. Attention averages over a
    # layer's unit tokens, so without it the width reaches the model only through the units' share of
    # attention, while a net's logits sum over its units. Off in exports that predate it.
    size_embedding: bool = False
    # role tokenizer: unit tokens also receive the other hidden layer's tokens weighted by the connecting
    # weights' features (RoleTokenizer). Off in exports that predate it.
    edge_messages: bool = False
    # edge messages summed over the other layer's n units and divided by n ("mean", as in exports that
    # predate this field), or centred over that layer and divided by sqrt(n) ("sqrt": a sum of n terms of
    # random sign grows as sqrt(n), so the message keeps one scale across widths; RoleTokenizer)
    message_norm: str = "mean"
    # role tokenizer: after every transformer block, each hidden unit's token also receives the other hidden
    # layer's (processed) tokens along the connecting weights (EdgeMessages), so what a unit learns in one
    # block reaches the units wired to it in the next. Off in exports that predate it.
    block_messages: bool = False
    # role tokenizer: rank K of a bilinear term in the decoder of the weights between two hidden layers,
    # sum_k p_k(unit a) q_k(unit b), beside the additive head (a weight's update from training is a sum of
    # products of one unit's backpropagated signal and the other's activation). 0: none, as in exports
    # that predate it.
    edge_rank: int = 0
    # role tokenizer: tokens also read the gradient of the training loss at theta_start on this many fixed
    # training examples (Task.probe_gradient), each role's scaled to unit RMS per network: a direction the
    # data gives, which the model otherwise has to infer from the weights alone. 0: none, as in exports
    # that predate it.
    grad_probes: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


# Parameter counts (``count_parameters``), neuron / chunk tokenizer:
#   preset  mnist-mlp (7,960)   cartpole (1,282)   mnist-cnn (5,082)   use
#   tiny      0.38M / 1.86M       0.23M / 0.62M      0.23M / 1.27M      CI, smoke tests
#   small     8.3M / 14.2M        7.8M / 9.3M        7.8M / 11.9M       2 CPU cores
#   base      60M / 72M           59M / 62M          59M / 67M          one GPU
#   large     311M / 335M         309M / 315M        309M / 325M        several GPUs (G.pt's scale)
PRESETS: dict[str, ModelConfig] = {
    "tiny": ModelConfig(width=64, depth=2, heads=2, edge_width=16, fourier_features=16),
    "small": ModelConfig(width=256, depth=6, heads=4),
    "base": ModelConfig(width=512, depth=12, heads=8),
    "large": ModelConfig(width=1024, depth=16, heads=16, edge_width=128),
}

TOKENIZERS = ("neuron", "chunk", "role")


def preset_config(
    preset: str, tokenizer: str = "", width: int = 0, depth: int = 0, heads: int = 0, edge_width: int = 0,
    **fields,
) -> ModelConfig:  # fmt: skip
    """``PRESETS[preset]`` with overrides: ``tokenizer`` (empty: the preset's) and sizes (0: the preset's),
    then any other :class:`ModelConfig` fields as given. Raises :class:`GptParamsError` naming the bad value."""
    if preset not in PRESETS:
        raise GptParamsError(f"unknown preset {preset!r}; expected one of {', '.join(PRESETS)}")
    arch = PRESETS[preset].to_dict()
    if tokenizer:
        if tokenizer not in TOKENIZERS:
            raise GptParamsError(f"tokenizer {tokenizer!r}; expected neuron, chunk or role (mixed zoos)")
        arch["tokenizer"] = tokenizer
    for name, value in (("width", width), ("depth", depth), ("heads", heads), ("edge_width", edge_width)):
        if value < 0:
            raise GptParamsError(f"{name} {value}; expected a positive integer (0: the preset's)")
        arch[name] = value or arch[name]
    if unknown := set(fields) - set(arch):
        raise GptParamsError(f"unknown model fields {sorted(unknown)}; expected some of {sorted(arch)}")
    arch.update(fields)
    if arch["message_norm"] not in MESSAGE_NORMS:
        raise GptParamsError(f"message_norm {arch['message_norm']!r}; expected {' or '.join(MESSAGE_NORMS)}")
    if arch["grad_probes"] < 0:
        raise GptParamsError(f"grad_probes {arch['grad_probes']}; expected 0 (none) or a number of examples")
    if arch["edge_rank"] < 0:
        raise GptParamsError(
            f"edge_rank {arch['edge_rank']}; expected 0 (no bilinear term) or a positive rank"
        )
    if arch["width"] % arch["heads"]:
        raise GptParamsError(
            f"width {arch['width']} is not divisible by {arch['heads']} heads; choose a width the heads divide"
        )
    return ModelConfig(**arch)


class FourierEmbedding(nn.Module):
    """Scalar ``(B,)`` -> ``(B, E)``: fixed log-spaced sin/cos features, then an MLP."""

    def __init__(self, width: int, n_freq: int, max_freq: float = 1000.0) -> None:
        super().__init__()
        self.register_buffer(
            "freqs", torch.exp(torch.linspace(0.0, math.log(max_freq), n_freq)), persistent=False
        )
        self.mlp = nn.Sequential(nn.Linear(2 * n_freq, width), nn.SiLU(), nn.Linear(width, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        angles = x.float()[:, None] * self.freqs  # (B, F)
        return self.mlp(torch.cat([angles.sin(), angles.cos()], -1))


def _modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale[:, None]) + shift[:, None]


class Block(nn.Module):
    """Pre-LN transformer block with adaLN-Zero conditioning (DiT)."""

    # attention: PyTorch's fused scaled-dot-product kernel on CUDA; on the CPU timm's explicit q @ k^T
    # path, which takes less time there forward and backward at these sequence lengths (11-513 tokens:
    # benchmarks/step_time.py); True forces the fused kernel on the CPU too
    fused_on_cpu: bool = False

    def __init__(self, width: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(width, num_heads=heads, qkv_bias=True)
        self.norm2 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(width, int(width * mlp_ratio), act_layer=lambda: nn.GELU(approximate="tanh"))
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(width, 6 * width))
        nn.init.zeros_(self.ada[1].weight)
        nn.init.zeros_(self.ada[1].bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        self.attn.fused_attn = x.device.type == "cuda" or self.fused_on_cpu
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(c).chunk(6, dim=-1)  # each (B, E)
        x = x + gate1[:, None] * self.attn(_modulate(self.norm1(x), shift1, scale1))
        return x + gate2[:, None] * self.mlp(_modulate(self.norm2(x), shift2, scale2))


class EdgeMessages(nn.Module):
    """Message passing along the weights between two hidden layers, between transformer blocks: attention
    cannot tell which units a weight connects, so each unit token receives ``sum_b e_ab * v(x_b)`` over the
    other layer's tokens ``x_b``, with the weights' features ``e_ab`` from the tokenizer
    (:func:`~gpt_params.tokenizers.edge_messages`, centred and divided by sqrt(n)), gated by the conditioning
    as DiT's branches are (adaLN-Zero: the gate starts at zero, so the block starts as the identity)."""

    def __init__(self, width: int, edge_width: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.v = nn.Linear(width, 2 * edge_width)
        self.out = nn.Linear(edge_width, width)
        self.gate = nn.Sequential(nn.SiLU(), nn.Linear(width, width))
        nn.init.zeros_(self.gate[1].weight)
        nn.init.zeros_(self.gate[1].bias)

    def forward(
        self, x: torch.Tensor, c: torch.Tensor, edges: list[tuple[int, int, torch.Tensor]], sizes: list[int]
    ) -> torch.Tensor:
        """``x`` (B, T, E) tokens laid out as :meth:`RoleTokenizer.encode`'s, ``c`` (B, E) the conditioning,
        ``edges`` from :meth:`RoleTokenizer.encode_with_edges`, ``sizes`` the hidden layers' widths."""
        gate = self.gate(c)[:, None]  # (B, 1, E)
        if not edges:  # one hidden layer: every message is zero, and out() of zero is its bias
            return x + gate * self.out.bias
        n = sum(sizes)
        starts = [sum(sizes[:g]) for g in range(len(sizes))]
        h = self.v(self.norm(x[:, :n]))  # (B, n, 2W): the unit tokens, the only ones that send
        w = h.shape[-1] // 2
        msg = [h.new_zeros(h.shape[0], n_g, w) for n_g in sizes]  # per hidden layer (B, n_g, W)
        for ga, gb, e in edges:
            va = h[:, starts[ga] : starts[ga] + sizes[ga], :w]  # (B, n_a, W)
            vb = h[:, starts[gb] : starts[gb] + sizes[gb], w:]  # (B, n_b, W)
            to_a, to_b = edge_messages(e.to(h.dtype), va, vb, "sqrt")
            msg[ga], msg[gb] = msg[ga] + to_a, msg[gb] + to_b
        out = self.out(torch.cat(msg, 1))  # (B, n, E)
        # the other tokens (B, T_rest, E) receive no message
        rest = self.out.bias.to(out.dtype).expand(x.shape[0], x.shape[1] - n, -1)
        return x + gate * torch.cat([out, rest], 1)


class ParamDiffusionTransformer(nn.Module):
    """x0-predicting denoiser over flat parameter vectors of one task layout."""

    def __init__(
        self,
        layout: ParamLayout | None,
        groups: tuple[PermGroup, ...],
        config: ModelConfig,
        diffusion: DiffusionConfig | None = None,
        family: dict[str, Role] | None = None,
    ) -> None:
        """One ``layout`` with hidden layers ``groups`` (tokenizers ``neuron``, ``chunk``), or every member
        of an architecture ``family`` (tokenizer ``role``; each call then takes the member's plan)."""
        super().__init__()
        self.config = config
        abar = train_scheduler(diffusion or DiffusionConfig()).alphas_cumprod.float()
        self.register_buffer("sqrt_abar", abar.sqrt(), persistent=False)  # (num_train_timesteps,)
        e = config.width
        self.family = family if config.tokenizer == "role" else None
        if config.grad_probes and config.tokenizer != "role":
            raise ValueError("grad_probes is a role-tokenizer (family) option")
        if config.tokenizer == "role":
            if family is None:
                raise ValueError(
                    "the 'role' tokenizer serves an architecture family; pass its roles as family="
                )
            self.tokenizer = RoleTokenizer(
                family,
                e,
                config.edge_width,
                messages=config.edge_messages,
                message_norm=config.message_norm,
                edge_rank=config.edge_rank,
                inputs=3 if config.grad_probes else 2,
            )
            n_skip = len(family)
        elif config.tokenizer in ("neuron", "chunk"):
            if layout is None:
                raise ValueError(f"the {config.tokenizer!r} tokenizer needs the layout it serves")
            tensor_id = torch.cat([torch.full((n,), i) for i, n in enumerate(layout.sizes)])
            self.register_buffer("tensor_id", tensor_id, persistent=False)  # (D,) tensor of each coordinate
            if config.tokenizer == "neuron":
                self.tokenizer = NeuronTokenizer(layout, groups, e, config.chunk, config.edge_width)
            else:
                self.tokenizer = ChunkTokenizer(layout, e, config.chunk)
            n_skip = len(layout.sizes)
        else:
            raise ValueError(f"unknown tokenizer {config.tokenizer!r}; expected 'neuron', 'chunk' or 'role'")
        self.t_embed = FourierEmbedding(e, config.fourier_features)
        # metrics vary over a few units (log-loss, error, return / max): low frequencies keep the
        # prompt embedding smooth, so prompts between those seen in training interpolate
        self.start_embed = FourierEmbedding(e, config.fourier_features, max_freq=config.metric_max_freq)
        self.prompt_embed = FourierEmbedding(e, config.fourier_features, max_freq=config.metric_max_freq)
        self.null_prompt = nn.Parameter(
            torch.zeros(e)
        )  # used where the prompt is dropped (classifier-free guidance)
        self.size_embed = None
        if config.size_embedding and self.family is not None:  # per hidden-layer position: width, or absent
            layers = self.tokenizer.max_layers
            self.size_embed = nn.ModuleList(
                FourierEmbedding(e, config.fourier_features, max_freq=config.metric_max_freq)
                for _ in range(layers)
            )
            self.no_layer = nn.Parameter(torch.zeros(layers, e))
        self.blocks = nn.ModuleList(Block(e, config.heads, config.mlp_ratio) for _ in range(config.depth))
        self.block_messages = None
        if config.block_messages and self.family is not None:
            self.block_messages = nn.ModuleList(
                EdgeMessages(e, config.edge_width) for _ in range(config.depth)
            )
        self.norm = nn.LayerNorm(e, elementwise_affine=False, eps=1e-6)
        self.final_ada = nn.Sequential(nn.SiLU(), nn.Linear(e, 2 * e))
        nn.init.zeros_(self.final_ada[1].weight)
        nn.init.zeros_(self.final_ada[1].bias)
        self.skip = nn.Linear(e, n_skip)  # per-tensor (per-role) skip coefficient from (t, metrics)
        nn.init.zeros_(self.skip.weight)
        nn.init.zeros_(self.skip.bias)

    def forward(
        self,
        theta_noisy: torch.Tensor,
        t: torch.Tensor,
        theta_start: torch.Tensor,
        start_metric: torch.Tensor,
        prompt: torch.Tensor,
        prompt_mask: torch.Tensor | None = None,
        plan: RolePlan | None = None,
        theta_grad: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predicted ``theta_future`` ``(B, D)`` (normalised parameters in, normalised out).

        ``t`` (B,) are diffusion timesteps in [0, 1000); metrics (B,) are already normalised;
        ``prompt_mask`` (B,) bool is False where the prompt is dropped; ``plan``: the family member
        the batch holds (``role`` tokenizer only; every row of a batch is the same member);
        ``theta_grad`` ``(B, D)``: the raw probe gradient at ``theta_start`` (models with ``grad_probes``).
        """
        if (plan is None) != (self.family is None):
            raise ValueError("a family model takes the member's plan=; a single-layout model takes none")
        if (theta_grad is None) != (not self.config.grad_probes):
            raise ValueError(
                f"this model reads a probe gradient on {self.config.grad_probes} examples; pass theta_grad="
                if self.config.grad_probes
                else "theta_grad given to a model without grad_probes"
            )
        member = () if plan is None else (plan,)
        if theta_grad is not None:
            member = (plan, role_rms_normalize(theta_grad, plan.role_id, len(self.family)))
        ids = self.tensor_id if plan is None else plan.role_id
        p = self.prompt_embed(prompt)  # (B, E)
        if prompt_mask is not None:
            p = torch.where(prompt_mask[:, None], p, self.null_prompt.expand_as(p))
        c = self.t_embed(t / 1000.0) + self.start_embed(start_metric) + p  # (B, E)
        if self.size_embed is not None:
            for g, emb in enumerate(self.size_embed):
                if g < len(plan.sizes):  # log2(width) / 8: 0 for one unit, 1 for 256
                    c = c + emb(t.new_full(t.shape, math.log2(plan.sizes[g]) / 8, dtype=torch.float32))
                else:
                    c = c + self.no_layer[g]
        if self.block_messages is None:
            x = self.tokenizer.encode(theta_start, theta_noisy, *member)  # (B, T, E)
            for block in self.blocks:
                x = block(x, c)
        else:
            x, edges = self.tokenizer.encode_with_edges(theta_start, theta_noisy, *member)  # (B, T, E), ...
            for block, messages in zip(self.blocks, self.block_messages, strict=True):
                x = messages(block(x, c), c, edges, plan.sizes)
        shift, scale = self.final_ada(c).chunk(2, dim=-1)
        x = _modulate(self.norm(x), shift, scale)  # (B, T, E)
        noisy_change = theta_noisy - self.sqrt_abar[t.long()][:, None] * theta_start  # (B, D)
        skip = self.skip(c)[:, ids] * noisy_change  # (B, D)
        return theta_start + skip + self.tokenizer.decode(x, theta_start, theta_noisy, *member)


def role_rms_normalize(g: torch.Tensor, role_id: torch.Tensor, n_roles: int) -> torch.Tensor:
    """``g`` ``(B, D)`` with each network's coordinates of each role divided by their RMS there (a probe
    gradient's scale spans orders of magnitude between inits and trained nets; its direction is kept)."""
    g = g.float()
    sq = g.new_zeros(g.shape[0], n_roles).index_add_(1, role_id, g.square())  # (B, roles)
    count = torch.bincount(role_id, minlength=n_roles).clamp_min(1).to(g.dtype)  # (roles,)
    rms = (sq / count).sqrt()[:, role_id]  # (B, D)
    return g / rms.clamp_min(1e-12)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
