"""PlainMamba loads official mmcls checkpoints and gives the official logits (independent reference).

The reference below follows ChenhongyiYang/PlainMamba (``ConvPatchEmbed`` with mmcv "corner" padding, pos_embed
bicubic-resized by mmcls ``resize_pos_embed``, ``PlainMambaLayer``, ``PlainMamba2D.forward`` with its two quirks:
dt / B / C in raster order while u is permuted, dt_proj's bias added twice; the final ``ln1``, the average-pooling
neck and ``head.fc``). Its scan orders and direction ids are built here from the official ``get_permute_order``
rules (snake starts, [start, right, left, up, down] ids), and the scan is a plain loop; no ssmkit code is used.
"""

from __future__ import annotations

import math

import pytest
import timm
import torch
import torch.nn.functional as F

import ssmkit
import ssmkit.vision  # noqa: F401  (registers the models in timm)
from ssmkit.vision.models.plainmamba import PlainMamba
from tests.kernels.scan_testing import assert_close

D, DEPTH, N, CLASSES, IMG = 32, 2, 4, 10, 32
CFG = dict(embed_dim=D, depth=DEPTH, d_state=N, img_size=IMG, num_classes=CLASSES)
TOL = 1e-4
MOVES = {(0, 1): 1, (0, -1): 2, (-1, 0): 3, (1, 0): 4}  # right, left, up, down


def official_shapes(num_convs: int, dw_layers: tuple[int, ...], dim: int = D) -> dict[str, tuple[int, ...]]:
    """mmcls ImageClassifier keys of PlainMamba (``backbone.`` / ``head.fc.``), for a 2 x 2 patch grid."""
    e, r = 2 * dim, math.ceil(dim / 16)
    bn = ("weight", "bias", "running_mean", "running_var")
    shapes = {"backbone.patch_embed.stem.0.weight": (64, 3, 7, 7), "backbone.pos_embed": (1, 4, dim),
              "backbone.patch_embed.projection.weight": (dim, 64, 8, 8), "backbone.patch_embed.projection.bias": (dim,),
              "backbone.ln1.weight": (dim,), "backbone.ln1.bias": (dim,), "head.fc.weight": (CLASSES, dim),
              "head.fc.bias": (CLASSES,)}
    shapes.update({f"backbone.patch_embed.stem.1.{k}": (64,) for k in bn})
    for c in range(num_convs):
        shapes[f"backbone.patch_embed.convs.{3 * c}.weight"] = (64, 64, 3, 3)
        shapes.update({f"backbone.patch_embed.convs.{3 * c + 1}.{k}": (64,) for k in bn})
    for i in range(DEPTH):
        p = f"backbone.layers.{i}."
        shapes.update({p + "norm.weight": (dim,), p + "norm.bias": (dim,), p + "mamba.A_log": (e, N),
                       p + "mamba.D": (e,), p + "mamba.direction_Bs": (5, N), p + "mamba.in_proj.weight": (2 * e, dim),
                       p + "mamba.in_proj.bias": (2 * e,), p + "mamba.conv2d.weight": (e, 1, 7, 7),
                       p + "mamba.conv2d.bias": (e,), p + "mamba.x_proj.weight": (r + 2 * N, e),
                       p + "mamba.dt_proj.weight": (e, r), p + "mamba.dt_proj.bias": (e,),
                       p + "mamba.out_proj.weight": (dim, e), p + "mamba.out_proj.bias": (dim,)})
        if i in dw_layers:
            shapes[p + "dw.0.weight"] = (dim, 1, 3, 3)
            shapes.update({p + f"dw.1.{k}": (dim,) for k in bn})
    return shapes


def official_state_dict(seed: int, num_convs: int = 1, dw_layers=(0,), dim: int = D) -> dict[str, torch.Tensor]:
    """Random values of a sensible scale under the official names (BN buffers included)."""
    gen = torch.Generator().manual_seed(seed)
    sd = {}
    for name, shape in official_shapes(num_convs, dw_layers, dim).items():
        value = torch.randn(shape, generator=gen)
        if name.endswith("running_var"):
            value = torch.rand(shape, generator=gen) + 0.5
        elif name.endswith("A_log"):
            value = torch.log(torch.rand(shape, generator=gen) * 4 + 0.5)
        elif name.endswith("mamba.D"):
            value = 1 + 0.5 * value
        elif name.endswith("dt_proj.bias"):
            value = 0.5 * value - 2.0
        elif len(shape) > 1 and not name.endswith(("pos_embed", "direction_Bs")):
            value = value / math.sqrt(math.prod(shape[1:]))
        elif name.endswith(("norm.weight", "ln1.weight", "1.weight")):
            value = 1 + 0.2 * value
        else:
            value = 0.2 * value
        sd[name] = value
        if name.endswith("running_var"):
            sd[name.replace("running_var", "num_batches_tracked")] = torch.tensor(1000)
    return sd


def mmcls_checkpoint(sd: dict[str, torch.Tensor]) -> dict:
    """mmcv checkpoint: ``meta`` + ``state_dict`` holding the EMA hook's ``ema_*`` buffers (raw weights)."""
    ema = {"ema_" + k.replace(".", "_"): torch.randn_like(v.float()) for k, v in sd.items() if "running" not in k}
    return {"meta": {"mmcls_version": "0.23.2", "epoch": 300}, "state_dict": {**sd, **ema}}


def snake(lines, first_forward: bool, horizontal: bool, h: int, w: int) -> list[int]:
    """Raster indices of a boustrophedon over ``lines`` (rows or columns), alternating direction."""
    order, forward = [], first_forward
    for line in lines:
        steps = range(w if horizontal else h)
        for k in (steps if forward else reversed(steps)):
            order.append(line * w + k if horizontal else k * w + line)
        forward = not forward
    return order


def official_orders(h: int, w: int):
    """PlainMamba's o1..o4 (get_permute_order) with per-step direction ids of the move that reached each step."""
    orders = [snake(range(h), True, True, h, w), snake(reversed(range(h)), h % 2 == 0, True, h, w),
              snake(range(w), True, False, h, w), snake(reversed(range(w)), w % 2 == 0, False, h, w)]
    out = []
    for order in orders:
        dirs = [0] + [MOVES[(b // w - a // w, b % w - a % w)] for a, b in zip(order[:-1], order[1:])]
        out.append((torch.tensor(order), torch.tensor(order).argsort(), torch.tensor(dirs)))
    return out


def loop_scan(u, delta, A, B, C, D_, delta_bias):
    """selective_scan_ref without z: u, delta (b, e, l); A (e, n); B, C (b, n, l)."""
    delta = F.softplus(delta + delta_bias[None, :, None])
    h = u.new_zeros(u.shape[0], u.shape[1], A.shape[1])
    ys = []
    for t in range(u.shape[2]):
        h = torch.exp(delta[:, :, t, None] * A) * h + delta[:, :, t, None] * B[:, None, :, t] * u[:, :, t, None]
        ys.append((h * C[:, None, :, t]).sum(-1))
    return torch.stack(ys, dim=2) + u * D_[None, :, None]


def ref_mixer(m, x, h, w):
    """PlainMamba2D.forward (official quirks) from its parameters; x (b, l, d)."""
    batch, seqlen, _ = x.shape
    e = m["D"].shape[0]
    xs, z = (x @ m["in_proj.weight"].T + m["in_proj.bias"]).chunk(2, dim=-1)
    x2 = F.conv2d(xs.reshape(batch, h, w, e).permute(0, 3, 1, 2), m["conv2d.weight"], m["conv2d.bias"], padding=3,
                  groups=e)
    x_conv = F.silu(x2).permute(0, 2, 3, 1).reshape(batch, seqlen, e)
    r, n = m["dt_proj.weight"].shape[1], m["A_log"].shape[1]
    dt, B, C = torch.split(x_conv @ m["x_proj.weight"].T, [r, n, n], dim=-1)
    dt = (dt @ m["dt_proj.weight"].T + m["dt_proj.bias"]).transpose(1, 2)  # bias here AND as delta_bias below
    B, C = B.transpose(1, 2), C.transpose(1, 2)
    ys = []
    for order, inverse, dirs in official_orders(h, w):
        dB = m["direction_Bs"][dirs].T[None]  # (1, n, l) in scan order
        y = loop_scan(x_conv[:, order].transpose(1, 2), dt, -torch.exp(m["A_log"]), B + dB, C, m["D"],
                      m["dt_proj.bias"])
        ys.append(y.transpose(1, 2)[:, inverse])
    return (sum(ys) * F.silu(z)) @ m["out_proj.weight"].T + m["out_proj.bias"]


def _bn(x, sd, p):
    return F.batch_norm(x, sd[p + "running_mean"], sd[p + "running_var"], sd[p + "weight"], sd[p + "bias"])


def ref_plainmamba(sd, img, num_convs=1, dw_layers=(0,)):
    """mmcls ImageClassifier(PlainMamba, CustomAveragePooling, LinearClsHead) in eval mode."""
    p = "backbone.patch_embed."
    x = F.relu(_bn(F.conv2d(img, sd[p + "stem.0.weight"], stride=2, padding=3), sd, p + "stem.1."))
    for c in range(num_convs):
        x = F.relu(_bn(F.conv2d(x, sd[p + f"convs.{3 * c}.weight"], padding=1), sd, p + f"convs.{3 * c + 1}."))
    x = F.pad(x, (0, -x.shape[3] % 8, 0, -x.shape[2] % 8))  # AdaptivePadding "corner"
    x = F.conv2d(x, sd[p + "projection.weight"], sd[p + "projection.bias"], stride=8)
    h, w = x.shape[2:]
    x = x.flatten(2).transpose(1, 2)
    pos = sd["backbone.pos_embed"].reshape(1, 2, 2, -1).permute(0, 3, 1, 2)
    pos = F.interpolate(pos, size=(h, w), mode="bicubic", align_corners=False) if (h, w) != (2, 2) else pos
    x = x + pos.flatten(2).transpose(1, 2)
    dim = x.shape[-1]
    for i in range(DEPTH):
        q = f"backbone.layers.{i}."
        mx = {k[len(q + "mamba."):]: v for k, v in sd.items() if k.startswith(q + "mamba.")}
        x = x + ref_mixer(mx, F.layer_norm(x, (dim,), sd[q + "norm.weight"], sd[q + "norm.bias"]), h, w)
        if i in dw_layers:
            y = F.conv2d(x.transpose(1, 2).reshape(-1, dim, h, w), sd[q + "dw.0.weight"], padding=1, groups=dim)
            x = F.gelu(_bn(y, sd, q + "dw.1.")).flatten(2).transpose(1, 2)
    x = F.layer_norm(x, (dim,), sd["backbone.ln1.weight"], sd["backbone.ln1.bias"], eps=1e-6).mean(1)
    return x @ sd["head.fc.weight"].T + sd["head.fc.bias"]


@pytest.fixture(scope="module")
def official_file(tmp_path_factory):
    sd = official_state_dict(0)
    path = tmp_path_factory.mktemp("plainmamba") / "l1.pth"
    torch.save(mmcls_checkpoint(sd), path)
    return path, sd


def test_orders_of_the_reference_are_plainmambas():
    (o1, _, d1), (o2, _, d2), (o3, _, d3), (o4, _, d4) = official_orders(3, 4)
    assert o1.tolist() == [0, 1, 2, 3, 7, 6, 5, 4, 8, 9, 10, 11] and d1[:6].tolist() == [0, 1, 1, 1, 4, 2]
    assert o2.tolist()[:5] == [11, 10, 9, 8, 4] and d2[:6].tolist() == [0, 2, 2, 2, 3, 1]  # H odd: start right
    assert o3.tolist()[:4] == [0, 4, 8, 9] and d3[:4].tolist() == [0, 4, 4, 1]
    assert o4.tolist()[:4] == [3, 7, 11, 10] and d4[:4].tolist() == [0, 4, 4, 2]  # W even: start at the top


def test_parameter_names_and_shapes_are_official():
    ours = {k: tuple(v.shape) for k, v in PlainMamba(**CFG).state_dict().items()}
    official = {k: tuple(v.shape) for k, v in official_state_dict(0).items()}
    mapped = {k.replace("backbone.ln1.", "norm.").replace("backbone.", "").replace("head.fc.", "head."): v
              for k, v in official.items()}
    assert ours == mapped


@pytest.mark.parametrize("size", [(32, 32), (40, 56)])  # 2 x 2 grid; 3 x 4 grid (padding, pos_embed resize, odd H)
def test_timm_and_ssmkit_load_the_official_file_and_give_the_official_logits(official_file, size):
    path, sd = official_file
    img = torch.randn(2, 3, *size)
    ref = ref_plainmamba(sd, img)
    via_timm = timm.create_model("plainmamba_l1", pretrained=True,
                                 pretrained_cfg_overlay=dict(file=str(path), num_classes=CLASSES), **CFG).eval()
    via_ssmkit = ssmkit.create_model("plainmamba_l1", pretrained=path, **CFG).eval()
    assert via_timm.compat and via_ssmkit.compat, "an official checkpoint must switch the compat quirks on"
    with torch.no_grad():
        assert_close("timm logits", ref, via_timm(img), TOL)
        assert_close("ssmkit logits", ref, via_ssmkit(img), TOL)
        via_ssmkit.set_compat(False)  # the paper's method differs from the released code
        assert (via_ssmkit(img) - ref).abs().max() > 1e-3


def test_l2_layout_two_stem_convs_no_dwconv(tmp_path):
    sd = official_state_dict(3, num_convs=2, dw_layers=())
    path = tmp_path / "l2.pth"
    torch.save(mmcls_checkpoint(sd), path)
    model = ssmkit.create_model("plainmamba_l2", pretrained=path, **CFG).eval()
    img = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert_close("L2 logits", ref_plainmamba(sd, img, num_convs=2, dw_layers=()), model(img), TOL)


def test_compat_is_off_unless_official_weights_are_loaded():
    assert not timm.create_model("plainmamba_l1", **CFG).compat
    assert PlainMamba(**CFG, compat=True).compat


def test_bad_inputs_raise_clear_errors(official_file):
    path, _ = official_file
    model = PlainMamba(**CFG)
    with pytest.raises(ValueError, match=r"in_chans=3 channels, found 4"):
        model(torch.randn(1, 4, 32, 32))
    fixed = PlainMamba(**CFG, dynamic_img_size=False)
    with pytest.raises(ValueError, match=r"found 64x32; pass dynamic_img_size=True"):
        fixed(torch.randn(1, 3, 64, 32))
    with pytest.raises(ValueError, match="a checkpoint of another variant") as err:  # L1 file into an L2 layout
        ssmkit.create_model("plainmamba_l1", pretrained=path, **dict(CFG, num_stem_convs=2, dwconv_layers=()))
    assert "missing keys (6): ['patch_embed.convs.3.weight'" in str(err.value)
    assert "unexpected keys (6): ['layers.0.dw.0.weight'" in str(err.value)
    with pytest.raises(ValueError, match=r"'pos_embed': checkpoint \[1, 4, 32\], model \[1, 4, 48\]"):
        ssmkit.create_model("plainmamba_l1", pretrained=path, **dict(CFG, embed_dim=48))
